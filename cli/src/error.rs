//! The CLI's error type and its documented exit codes: 0 ok, 1 failure,
//! 2 usage, 3 not found, 4 conflict, 5 unreachable.

use sundial_proto::ErrorDetail;

/// Everything a command can fail with; each kind maps to one exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or a local input is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The server answered with an error.
    #[error("{}", api_message(.status, .detail))]
    Api { status: u16, detail: ErrorDetail },
    /// The server could not be reached (exit 5).
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    /// Anything else (exit 1).
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
    /// A command that ran and wants a particular exit code without a message
    /// (`diff` with changes, `trigger --wait` with the run's code).
    #[error("exit {0}")]
    Exit(i32),
}

fn api_message(status: &u16, d: &ErrorDetail) -> String {
    let mut s = format!("server error {status} {}: {}", d.code, d.message);
    if let Some(f) = &d.field {
        if !d.message.contains(f.as_str()) {
            s.push_str(&format!(" (field {f})"));
        }
    }
    s
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::Usage(message.into())
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Api { status, .. } => match status {
                404 => 3,
                409 => 4,
                502..=504 => 5,
                _ => 1,
            },
            CliError::Unreachable { .. } => 5,
            CliError::Other(_) => 1,
            CliError::Exit(code) => *code,
        }
    }
}

pub type CliResult<T> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> CliError {
        CliError::Api {
            status,
            detail: ErrorDetail {
                code: "x".into(),
                message: "m".into(),
                field: Some("schedule".into()),
                index: None,
            },
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(api(404).exit_code(), 3);
        assert_eq!(api(409).exit_code(), 4);
        assert_eq!(api(400).exit_code(), 1);
        assert_eq!(api(503).exit_code(), 5);
        assert_eq!(CliError::usage("x").exit_code(), 2);
        assert_eq!(
            api(400).to_string(),
            "server error 400 x: m (field schedule)"
        );
    }
}
