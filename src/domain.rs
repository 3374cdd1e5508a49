//! Values from clients parsed into types that cannot hold invalid data.

use crate::error::ApiError;

/// Shortest and longest username, in characters.
pub const USERNAME_LEN: std::ops::RangeInclusive<usize> = 3..=32;

/// Maximum display name length, in characters.
pub const DISPLAY_NAME_MAX: usize = 64;

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
                    "{input:?} has {len} characters; use {} to {}",
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
                format!("{input:?} contains {bad:?}; use only letters a-z, digits 0-9, '.', '_' and '-'"),
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
