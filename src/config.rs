//! (placeholder: configuration is being written)
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig;
#[derive(Debug, Clone)]
pub struct ProxyConfig;
impl ServerConfig {
    pub fn describe(&self) -> String {
        unimplemented!()
    }
}
impl ProxyConfig {
    pub fn describe(&self) -> String {
        unimplemented!()
    }
}
pub fn load_server(_: &Path) -> Result<ServerConfig, ConfigError> {
    unimplemented!()
}
pub fn load_proxy(_: &Path) -> Result<ProxyConfig, ConfigError> {
    unimplemented!()
}
