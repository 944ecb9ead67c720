//! `portcullis new`: every kind's template in every language builds with its toolchain and
//! loads in the gateway with its sample configuration (compiled, imports and exports checked,
//! instantiated and configured). Rust templates also pass their own unit tests natively.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis::config::{self, PluginKind};
use portcullis::scaffold::{self, Lang};
use portcullis::snapshot::Snapshot;
use portcullis_e2e::{engine, root, write_config};

const KINDS: [PluginKind; 5] =
    [PluginKind::Auth, PluginKind::RateLimit, PluginKind::Validation, PluginKind::Logging, PluginKind::Filter];

fn workdir(lang: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-new-{lang}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Loads `component` as plugin `id` of `kind` on a route with the template's sample config.
async fn load(id: &str, kind: PluginKind, component: &Path) {
    let toml = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[upstream.app]\nendpoints = [\"127.0.0.1:9\"]\n\n\
         [plugin.{id}]\npath = \"{}\"\nkind = \"{kind}\"\n\n[[route]]\nid = \"r\"\npath_prefix = \"/\"\nupstream = \"app\"\n\n\
         [[route.chain]]\nplugin = \"{id}\"\nconfig = {}\n",
        component.display(),
        scaffold::sample_config(kind)
    );
    let (_dir, file) = write_config(&toml);
    let loaded = config::load(&file).expect("the test configuration parses");
    if let Err(e) = Snapshot::build(&loaded, &engine()).await {
        panic!("the {kind} template did not load:\n{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_templates_build_test_and_load() {
    let dir = workdir("rust");
    let target = root().join("target").join("scaffold");
    for kind in KINDS {
        let name = format!("my-{kind}");
        let project = dir.join(&name);
        scaffold::generate(kind, Lang::Rust, &project, &root().join("sdk")).unwrap();
        let cargo = |args: &[&str]| {
            let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            c.current_dir(&project)
                .args(args)
                .env("CARGO_TARGET_DIR", &target)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("CARGO_BUILD_TARGET");
            c
        };
        run(&mut cargo(&["test", "--quiet"]));
        run(&mut cargo(&["build", "--quiet", "--release", "--target", "wasm32-wasip2"]));
        let component = target.join(scaffold::output_path(Lang::Rust, &name).strip_prefix("target").unwrap());
        load(&format!("rust-{kind}"), kind, &component).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_templates_build_and_load() {
    let dir = workdir("js");
    let componentize = Path::new(env!("PORTCULLIS_LANG_TOOLCHAINS")).join("js/node_modules/.bin/componentize-js");
    for kind in KINDS {
        let name = format!("my-{kind}");
        let project = dir.join(&name);
        scaffold::generate(kind, Lang::Js, &project, Path::new("unused")).unwrap();
        // What `npm run build` runs, with the toolchain tests/build.rs installed (same pins).
        run(Command::new(&componentize).current_dir(&project).args([
            "--wit",
            "wit",
            "--world-name",
            &format!("{kind}-plugin"),
            "-o",
            &format!("{name}.wasm"),
            "src/plugin.js",
        ]));
        load(&format!("js-{kind}"), kind, &project.join(scaffold::output_path(Lang::Js, &name))).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_templates_build_and_load() {
    let dir = workdir("py");
    let componentize = Path::new(env!("PORTCULLIS_LANG_TOOLCHAINS")).join("py/bin/componentize-py");
    for kind in KINDS {
        let name = format!("my-{kind}");
        let project = dir.join(&name);
        scaffold::generate(kind, Lang::Python, &project, Path::new("unused")).unwrap();
        run(Command::new(&componentize).current_dir(&project).env("PYTHONDONTWRITEBYTECODE", "1").args([
            "-d",
            "wit",
            "-w",
            &format!("{kind}-plugin"),
            "componentize",
            "app",
            "-o",
            &format!("{name}.wasm"),
        ]));
        load(&format!("py-{kind}"), kind, &project.join(scaffold::output_path(Lang::Python, &name))).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
