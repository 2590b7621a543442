//! The second upstream kind: a real nginx (one worker, on the load core)
//! with one server per version. A 1 KB answer is `return 200 '<json>'`; a
//! larger one is a static file (nginx's config parser does not take a
//! 256 KiB string), which adds Last-Modified, ETag and Accept-Ranges.
//! Both carry the service's headers (Set-Cookie, X-Version, ...).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::LOAD_CORE;
use crate::processes::{Proc, free_port, spawn_nginx};
use crate::scenarios::{ResponseShape, json_body};
use crate::targets::render;
use crate::upstream::SET_COOKIE;

const TEMPLATE: &str = include_str!("upstream_nginx.conf");
/// The longest body written into the config as a `return` string.
const RETURN_MAX: usize = 2048;

/// Starts nginx as the upstreams `names` answering `shape`; returns the
/// process (master + worker) and one port per name.
pub fn spawn_nginx_upstreams(
    exe: &Path,
    taskset: Option<&Path>,
    work: &Path,
    names: &[&str],
    shape: ResponseShape,
) -> Result<(Proc, Vec<u16>)> {
    let dir = work.join("upstream-nginx");
    std::fs::create_dir_all(&dir)?;
    let mut servers = String::new();
    let mut ports = Vec::new();
    for name in names {
        let port = free_port()?;
        ports.push(port);
        let body = json_body(name, shape.body_len());
        let mut location = String::new();
        for (k, v) in [
            ("Cache-Control", "no-store, max-age=0"),
            ("Vary", "Accept-Encoding, Origin"),
            ("X-Version", name),
            ("X-Request-Id", "5f0c6a2e-8d4b-4c1f-9e3a-7b2d1c0e9f8a"),
            ("Set-Cookie", SET_COOKIE),
            (
                "Strict-Transport-Security",
                "max-age=31536000; includeSubDomains",
            ),
        ] {
            let _ = writeln!(location, "            add_header {k} \"{v}\" always;");
        }
        if body.len() <= RETURN_MAX {
            let _ = writeln!(location, "            return 200 '{body}';");
        } else {
            let root = dir.join(name);
            std::fs::create_dir_all(&root)?;
            std::fs::write(root.join("body.json"), &body)?;
            let _ = writeln!(location, "            root {};", root.display());
            let _ = writeln!(location, "            rewrite ^ /body.json break;");
        }
        let _ = write!(
            servers,
            "    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n        location / {{\n{location}        }}\n    }}\n"
        );
    }
    let config = render(
        TEMPLATE,
        &[("DIR", dir.display().to_string()), ("SERVERS", servers)],
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, config)?;
    let proc = spawn_nginx("nginx upstream", exe, taskset, LOAD_CORE, &dir, &conf_path)?;
    Ok((proc, ports))
}
