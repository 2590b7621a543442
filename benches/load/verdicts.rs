//! Verdicts: the performance targets, reported (not enforced).

pub enum Verdict {
    Pass(String),
    Fail(String),
    Skip(String),
}

pub fn verdict(label: &str, ok: Option<bool>, detail: String, skip_why: &str) -> Verdict {
    match ok {
        Some(true) => Verdict::Pass(format!("{label}: {detail}")),
        Some(false) => Verdict::Fail(format!("{label}: {detail}")),
        None => Verdict::Skip(format!("{label}: {skip_why}")),
    }
}

pub fn print_verdicts(vs: &[Verdict]) {
    for v in vs {
        match v {
            Verdict::Pass(s) => println!("  PASS  {s}"),
            Verdict::Fail(s) => println!("  FAIL  {s}"),
            Verdict::Skip(s) => println!("  SKIP  {s}"),
        }
    }
}
