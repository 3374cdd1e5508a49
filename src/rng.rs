//! Secrets from the operating system's random number generator.

use rand::rngs::SysRng;
use rand::TryRng;

/// Fills an array from the OS RNG (getrandom). A failure of the OS RNG is
/// reported, never replaced by a weaker source.
pub fn os_random<const N: usize>() -> Result<[u8; N], RngError> {
    let mut bytes = [0u8; N];
    SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| RngError(e.to_string()))?;
    Ok(bytes)
}

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RngError(String);
