//! How a command fails: one type, one exit code per kind of fault, and one
//! clear line on stderr (JSON with `--json` for what X answered).

use std::process::ExitCode;

use aaa_xapi::XError;

/// Exit codes: 1 the service or database failed, 2 the request was wrong
/// (usage, window, credentials), 3 X refused it (all or part), 4 X could
/// not be reached or failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or environment is wrong.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    X(#[from] XError),
    /// X refused some of a batch; the rest was done.
    #[error("{refused} of {of} {what}")]
    PartlyRefused {
        what: &'static str,
        refused: usize,
        of: usize,
    },
    /// A service, the database or a file failed.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) | CliError::X(XError::Invalid(_)) => 2,
            CliError::PartlyRefused { .. }
            | CliError::X(
                XError::Refused { .. } | XError::RateLimited { .. } | XError::Unauthorized { .. },
            ) => 3,
            CliError::X(
                XError::Unavailable { .. }
                | XError::Transport(_)
                | XError::Timeout(_)
                | XError::Unexpected(_),
            ) => 4,
        })
    }

    /// Says what failed on stderr: JSON when `json` (X's reason and raw
    /// answer kept for scripts), else one line.
    pub fn report(&self, json: bool) {
        match self {
            CliError::X(error) if json => {
                let reason = error.reason().map(|r| r.name().to_owned());
                eprintln!(
                    "{}",
                    serde_json::json!({"error": error.to_string(), "reason": reason, "body": error.body()})
                );
            }
            CliError::PartlyRefused { refused, of, .. } if json => eprintln!(
                "{}",
                serde_json::json!({"error": self.to_string(), "refused": refused, "of": of})
            ),
            CliError::Failed(_) => {
                tracing::error!(message = "aaa failed", error = %self);
                eprintln!("error: {self}");
            }
            _ => eprintln!("error: {self}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_separate_user_x_and_transport() {
        let code = |e: XError| CliError::from(e).exit_code();
        assert_eq!(code(XError::Invalid("x".into())), ExitCode::from(2));
        assert_eq!(
            code(XError::from_response(
                409,
                None,
                r#"{"title":"ReplayConflictError"}"#.into()
            )),
            ExitCode::from(3)
        );
        assert_eq!(code(XError::Transport("refused".into())), ExitCode::from(4));
        let partly = CliError::PartlyRefused {
            what: "subscriptions refused",
            refused: 1,
            of: 3,
        };
        assert_eq!(partly.exit_code(), ExitCode::from(3));
        assert_eq!(partly.to_string(), "1 of 3 subscriptions refused");
        assert_eq!(CliError::Usage("bad".into()).exit_code(), ExitCode::from(2));
        assert_eq!(
            CliError::from(anyhow::anyhow!("db down")).exit_code(),
            ExitCode::from(1)
        );
    }
}
