//! Builds every first-party plugin and every test guest for `wasm32-wasip2` (profile `plugin`)
//! in one cargo invocation, as wasmtime's `crates/test-programs` builds its guests, then the
//! JavaScript and Python plugins with their own toolchains, and tells the tests where the
//! components are (`PORTCULLIS_PLUGIN_DIR`).
//!
//! It shares the workspace's target directory, so the quickstart's plugin build and this one
//! reuse each other's artifacts. Needs the `wasm32-wasip2` target (`rustup target add
//! wasm32-wasip2`), Node.js ≥ 18 with npm, and Python ≥ 3.10 with `venv` (`.ci/run` installs
//! what is missing). The toolchains are installed from their lock files under the target
//! directory, not in the source tree: componentize-js from
//! `plugins/api-version-js/package-lock.json` (`npm ci`), componentize-py from
//! `plugins/deny-list-py/requirements.txt` (`pip install --require-hashes`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Packages built for the tests: the plugins of `plugins/` and the guests of `tests/guests/`.
const PACKAGES: [&str; 16] = [
    "jwt-auth",
    "audit-log",
    "rate-limit",
    "rbac",
    "api-key-auth",
    "request-validation",
    "oauth2-introspection",
    "mtls-auth",
    "credential-injection",
    "chaos-filter",
    "socket-filter",
    "tag-filter-a",
    "tag-filter-b",
    "legacy-filter",
    "bare-filter",
    "trail-logger",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("tests/ lives in the workspace root").to_path_buf();
    for dir in ["sdk", "wit", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    // The workspace manifest holds the `plugin` profile the components are built with.
    println!("cargo:rerun-if-changed={}", root.join("Cargo.toml").display());
    // The Rust plugins whole; of the others their sources only (a developer's `node_modules`
    // there would otherwise be scanned at every build).
    for entry in std::fs::read_dir(root.join("plugins")).expect("plugins/ is readable").flatten() {
        let dir = entry.path();
        if dir.join("Cargo.toml").exists() {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
    }
    for source in [JS_PLUGIN.sources, PY_PLUGIN.sources].concat() {
        println!("cargo:rerun-if-changed={}", root.join(source).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let dir = target_dir.join("wasm32-wasip2").join("plugin");
    println!("cargo:rustc-env=PORTCULLIS_PLUGIN_DIR={}", dir.display());
    let tools = target_dir.join("lang-toolchains");
    // componentize-js (`js/node_modules/.bin/`) and componentize-py (`py/bin/`), for tests
    // that build scaffolded projects.
    println!("cargo:rustc-env=PORTCULLIS_LANG_TOOLCHAINS={}", tools.display());
    // `cargo clippy` only checks the tests, which run nothing: the components are not needed,
    // and building them under clippy's environment would rebuild them for the next test run.
    println!("cargo:rerun-if-env-changed=RUSTC_WORKSPACE_WRAPPER");
    let wrapper = std::env::var_os("RUSTC_WORKSPACE_WRAPPER").map(PathBuf::from);
    if wrapper.is_some_and(|w| w.file_stem().is_some_and(|s| s.to_string_lossy().starts_with("clippy-driver"))) {
        return;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&root)
        .args(["build", "--profile", "plugin", "--target", "wasm32-wasip2"])
        .args(PACKAGES.iter().flat_map(|p| ["-p", p]))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    let status = build.status().expect("running cargo to build the test plugins");
    assert!(
        status.success(),
        "building the plugins for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );
    std::fs::create_dir_all(&tools).expect("creating the toolchain directory");
    // The two toolchains run side by side: each is mostly single-threaded.
    std::thread::scope(|s| {
        let js = s.spawn(|| build_js(&root, &tools, &dir));
        let py = s.spawn(|| build_py(&root, &tools, &dir));
        js.join().expect("the JavaScript build panicked");
        py.join().expect("the Python build panicked");
    });
}

/// A plugin built by another language's toolchain.
struct LangPlugin {
    /// Its directory, from the workspace root.
    dir: &'static str,
    /// The files it is built from, from the workspace root.
    sources: &'static [&'static str],
    /// The component's file name in `PORTCULLIS_PLUGIN_DIR`.
    output: &'static str,
}

const JS_PLUGIN: LangPlugin = LangPlugin {
    dir: "plugins/api-version-js",
    sources: &[
        "plugins/api-version-js/src",
        "plugins/api-version-js/package.json",
        "plugins/api-version-js/package-lock.json",
    ],
    output: "api_version_js.wasm",
};

const PY_PLUGIN: LangPlugin = LangPlugin {
    dir: "plugins/deny-list-py",
    sources: &[
        "plugins/deny-list-py/app.py",
        "plugins/deny-list-py/policy.py",
        "plugins/deny-list-py/requirements.txt",
    ],
    output: "deny_list_py.wasm",
};

fn run(command: &mut Command, what: &str) {
    let status = command.status().unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", command.get_program()));
    assert!(status.success(), "{what} failed ({status})");
}

/// Whether `output` exists and is newer than every file in `inputs` (directories: their files).
fn fresh(output: &Path, inputs: &[PathBuf]) -> bool {
    let Ok(built) = std::fs::metadata(output).and_then(|m| m.modified()) else { return false };
    fn newest(path: &Path) -> std::time::SystemTime {
        let own = std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(std::time::SystemTime::now());
        match std::fs::read_dir(path) {
            Ok(entries) => entries.flatten().map(|e| newest(&e.path())).fold(own, std::cmp::max),
            Err(_) => own,
        }
    }
    inputs.iter().all(|input| newest(input) <= built)
}

/// `npm ci` of the plugin's lock file into `tools/js`, then componentize-js with its default
/// flags against the `filter-plugin` world.
fn build_js(root: &Path, tools: &Path, out: &Path) {
    let plugin = root.join(JS_PLUGIN.dir);
    let prefix = tools.join("js");
    let lock = plugin.join("package-lock.json");
    let installed = prefix.join("node_modules/.package-lock.json");
    if !fresh(&installed, &[lock.clone(), plugin.join("package.json")]) {
        std::fs::create_dir_all(&prefix).expect("creating the npm prefix");
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(plugin.join(file), prefix.join(file)).expect("copying the npm manifest");
        }
        run(
            Command::new("npm").current_dir(&prefix).args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]),
            "installing componentize-js (`npm ci`; needs Node.js >= 18 and npm)",
        );
    }
    let output = out.join(JS_PLUGIN.output);
    let inputs: Vec<PathBuf> =
        JS_PLUGIN.sources.iter().map(|s| root.join(s)).chain([root.join("wit"), installed]).collect();
    if fresh(&output, &inputs) {
        return;
    }
    run(
        Command::new(prefix.join("node_modules/.bin/componentize-js"))
            .current_dir(&plugin)
            // Relative: the splicer runs sandboxed and sees only the working directory's tree
            // when the path is absolute and the project lives outside it.
            .args(["--wit", "../../wit", "--world-name", "filter-plugin", "-o"])
            .arg(&output)
            .arg("src/plugin.js"),
        "building plugins/api-version-js with componentize-js",
    );
}

/// A virtual environment in `tools/py` with the plugin's pinned componentize-py, then
/// componentize-py with its default flags against the `filter-plugin` world.
fn build_py(root: &Path, tools: &Path, out: &Path) {
    let plugin = root.join(PY_PLUGIN.dir);
    let venv = tools.join("py");
    let requirements = plugin.join("requirements.txt");
    let stamp = venv.join("installed-requirements.txt");
    let componentize = venv.join("bin/componentize-py");
    if !fresh(&stamp, std::slice::from_ref(&requirements)) || !componentize.exists() {
        let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
        run(
            Command::new(python).arg("-m").arg("venv").arg("--clear").arg(&venv),
            "creating a Python virtual environment (needs Python >= 3.10 with venv)",
        );
        run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", "--require-hashes", "-r"])
                .arg(&requirements),
            "installing componentize-py (`pip install --require-hashes`)",
        );
        std::fs::copy(&requirements, &stamp).expect("recording the installed requirements");
    }
    let output = out.join(PY_PLUGIN.output);
    let inputs: Vec<PathBuf> =
        PY_PLUGIN.sources.iter().map(|s| root.join(s)).chain([root.join("wit"), stamp]).collect();
    if fresh(&output, &inputs) {
        return;
    }
    run(
        Command::new(&componentize)
            .current_dir(&plugin)
            // No `__pycache__` in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg("-d")
            .arg(root.join("wit"))
            .args(["-w", "filter-plugin", "componentize", "app", "-o"])
            .arg(&output),
        "building plugins/deny-list-py with componentize-py",
    );
}
