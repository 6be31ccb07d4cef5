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
