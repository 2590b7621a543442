//! Gateway config text for tests: listener and admin on 127.0.0.1:0, the
//! first version stable.

use std::net::SocketAddr;

/// A config on 127.0.0.1:0: `[admin]` with the extra lines `admin_lines`
/// (each ending in `\n`), `[split]` (stable: the first version) followed by
/// `split_lines`, then one `[[versions]]` table per `(name, weight, source)`,
/// `source` being its endpoint line (`endpoints = [...]`, `cloudmap = {...}`).
pub fn gateway_config(
    admin_lines: &str,
    split_lines: &str,
    versions: &[(&str, u32, String)],
) -> String {
    let mut text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n{admin_lines}\n[split]\nstable = \"{}\"\n{split_lines}\n",
        versions[0].0
    );
    for (name, weight, source) in versions {
        text.push_str(&format!(
            "\n[[versions]]\nname = \"{name}\"\nweight = {weight}\n{source}\n"
        ));
    }
    text
}

/// `endpoints = ["a", "b"]` for a version.
pub fn endpoints_line(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("endpoints = [{}]", list.join(", "))
}

/// A config with the given versions `(name, weight, upstream)` and extra
/// `[split]` lines.
pub fn config(split_extra: &str, versions: &[(&str, u32, SocketAddr)]) -> String {
    let versions: Vec<(&str, u32, String)> = versions
        .iter()
        .map(|(name, weight, addr)| (*name, *weight, endpoints_line(&[*addr])))
        .collect();
    gateway_config("", split_extra, &versions)
}

/// Like [`config`], but each version may list several endpoints (at least
/// one: the config does not allow none).
pub fn config_endpoints(split_extra: &str, versions: &[(&str, u32, Vec<SocketAddr>)]) -> String {
    let versions: Vec<(&str, u32, String)> = versions
        .iter()
        .map(|(name, weight, addrs)| (*name, *weight, endpoints_line(addrs)))
        .collect();
    gateway_config("", split_extra, &versions)
}
