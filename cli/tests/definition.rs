//! The clap definition is consistent, and completions and man pages are
//! generated from it for every command.

use clap::CommandFactory;
use sundial_cli::args::Cli;

#[test]
fn definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn completions_and_man_pages_cover_the_commands() {
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "sundial", &mut buf);
        let text = String::from_utf8(buf).unwrap();
        for word in [
            "apply",
            "diff",
            "export",
            "trigger",
            "set-context",
            "ca-file",
        ] {
            assert!(text.contains(word), "{shell:?} completion lacks {word}");
        }
    }
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .unwrap();
    let man = String::from_utf8(buf).unwrap();
    assert!(man.starts_with(".ie"), "{}", &man[..80]);
    assert!(
        man.contains("sundial\\-apply") || man.contains("apply"),
        "{man}"
    );
    let dir = tempfile::tempdir().unwrap();
    clap_mangen::generate_to(Cli::command(), dir.path()).unwrap();
    for page in ["sundial.1", "sundial-apply.1", "sundial-jobs-trigger.1"] {
        assert!(dir.path().join(page).exists(), "{page} missing");
    }
}

/// Every command and every argument says what it is in `--help` and the man
/// pages (clap's own `help` and `version` aside).
#[test]
fn every_command_and_argument_has_help() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        if cmd.get_about().is_none() {
            missing.push(format!("command `{path}`"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") || arg.is_global_set() {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("argument `{id}` of `{path}`"));
            }
        }
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    let cli = Cli::command();
    walk(&cli, "sundial", &mut missing);
    assert!(missing.is_empty(), "no help text: {missing:#?}");
}

/// `list` and `delete` work where `ls` and `rm` do, as in kubectl and nomad.
#[test]
fn list_and_delete_are_aliases() {
    use clap::Parser;
    for line in [
        "sundial jobs list",
        "sundial runs list --job j",
        "sundial nodes list",
        "sundial tokens list",
        "sundial keys list",
        "sundial jobs delete j",
        "sundial tokens delete t",
        "sundial keys delete k",
    ] {
        let parsed = Cli::try_parse_from(line.split(' '));
        assert!(parsed.is_ok(), "{line}: {:?}", parsed.err());
    }
}
