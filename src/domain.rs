//! Values from clients parsed into types that cannot hold invalid data.

use crate::error::ApiError;

/// Shortest and longest username, in characters.
pub const USERNAME_LEN: std::ops::RangeInclusive<usize> = 3..=32;

/// Maximum display name length, in characters.
pub const DISPLAY_NAME_MAX: usize = 64;

/// Maximum characters of a rejected value quoted back in an error message.
/// The rest is cut, so that a reply never echoes a huge input.
pub const QUOTED_MAX: usize = 40;

/// Returns `input` in quotes with escapes, cut after [`QUOTED_MAX`]
/// characters.
pub fn quoted(input: &str) -> String {
    let mut chars = input.chars();
    let prefix: String = chars.by_ref().take(QUOTED_MAX).collect();
    if chars.next().is_some() {
        format!("{prefix:?}…")
    } else {
        format!("{prefix:?}")
    }
}

/// A username: lowercased, 3 to 32 characters of `a-z 0-9 . _ -`.
///
/// Input is lowercased first, so `Alice` and `alice` are the same user.
/// Anything else (non-ASCII, spaces, `/`, control characters) is rejected
/// rather than rewritten, so two different inputs never map to one user by
/// accident.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    pub fn parse(input: &str) -> Result<Username, ApiError> {
        let lowered = input.to_ascii_lowercase();
        let len = lowered.chars().count();
        if !USERNAME_LEN.contains(&len) {
            return Err(ApiError::invalid(
                "username",
                format!(
                    "{} has {len} characters; use {} to {}",
                    quoted(input),
                    USERNAME_LEN.start(),
                    USERNAME_LEN.end()
                ),
            ));
        }
        if let Some(bad) = lowered.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        }) {
            return Err(ApiError::invalid(
                "username",
                format!(
                    "{} contains {bad:?}; use only letters a-z, digits 0-9, '.', '_' and '-'",
                    quoted(input)
                ),
            ));
        }
        Ok(Username(lowered))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for Username {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name: up to 64 characters, no control characters, trimmed.
pub fn parse_display_name(input: &str) -> Result<String, ApiError> {
    let trimmed = input.trim();
    let len = trimmed.chars().count();
    if len > DISPLAY_NAME_MAX {
        return Err(ApiError::invalid(
            "display_name",
            format!("it has {len} characters; use at most {DISPLAY_NAME_MAX}"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "display_name",
            "it contains a control character; use printable text only",
        ));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_is_lowercased() {
        assert_eq!(
            Username::parse("Alice.B_1-x").unwrap().as_str(),
            "alice.b_1-x"
        );
    }

    #[test]
    fn username_rejects_bad_input() {
        let too_long = "a".repeat(33);
        for input in [
            "ab",
            too_long.as_str(),
            "al ice",
            "../etc",
            "a/b",
            "ålice",
            "bob\n",
            "",
            "a\u{0}b",
        ] {
            let error = Username::parse(input).unwrap_err();
            assert!(
                matches!(
                    error,
                    ApiError::InvalidInput {
                        field: "username",
                        ..
                    }
                ),
                "{input:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn username_error_quotes_at_most_forty_characters() {
        let error = Username::parse(&"a".repeat(10_000))
            .unwrap_err()
            .to_string();
        assert!(error.contains("10000 characters"), "{error}");
        assert!(
            error.contains(&format!("\"{}\"…", "a".repeat(40))),
            "{error}"
        );
        assert!(error.len() < 200, "{error}");
    }

    #[test]
    fn username_length_bounds_are_inclusive() {
        assert!(Username::parse("abc").is_ok());
        assert!(Username::parse(&"a".repeat(32)).is_ok());
    }

    #[test]
    fn display_name_limits() {
        assert_eq!(
            parse_display_name("  Alice Liddell ").unwrap(),
            "Alice Liddell"
        );
        assert!(parse_display_name(&"é".repeat(64)).is_ok());
        assert!(parse_display_name(&"é".repeat(65)).is_err());
        assert!(parse_display_name("bad\u{7}bell").is_err());
    }
}
