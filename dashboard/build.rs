//! Embeds the built page (`web/dist/`, made by `scripts/dashboard.sh`) into
//! the crate. Without a build (a checkout where npm has not run yet) the
//! crate still compiles, with a page that says how to build the real one,
//! so `cargo clippy` and `cargo build` never need Node.js.

use std::fmt::Write as _;
use std::path::Path;

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let dist = Path::new(&manifest).join("web").join("dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut code = String::from("/// The page's files: (path, content type, bytes).\npub static ASSETS: &[(&str, &str, &[u8])] = &[\n");
    let mut built = false;
    if dist.join("index.html").is_file() {
        let mut names: Vec<String> = std::fs::read_dir(&dist)
            .expect("read web/dist")
            .filter_map(Result::ok)
            .filter(|e| e.path().is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            let path = dist.join(&name);
            writeln!(
                code,
                "    ({:?}, {:?}, include_bytes!({:?})),",
                format!("/{name}"),
                content_type(&name),
                path.display().to_string()
            )
            .expect("write to a String");
        }
        built = true;
    } else {
        println!(
            "cargo:warning=fleet-dashboard: web/dist is missing; embedding a placeholder page (run scripts/dashboard.sh)"
        );
        code.push_str(
            "    (\"/index.html\", \"text/html; charset=utf-8\", b\"<!doctype html><title>Fleet</title><p>This nodectl was built without the fleet page: run <code>scripts/dashboard.sh</code>, then build nodectl again.</p>\"),\n",
        );
    }
    code.push_str("];\n");
    writeln!(code, "/// Whether the real page was built in (not the placeholder).\npub const BUILT: bool = {built};").expect("write to a String");
    std::fs::write(Path::new(&out).join("assets.rs"), code).expect("write assets.rs");
}
