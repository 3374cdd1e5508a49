//! (placeholder)
pub struct InitOptions {
    pub out: std::path::PathBuf,
    pub force: bool,
    pub proxy_names: Vec<String>,
    pub server_names: Vec<String>,
}
pub fn init(_: &InitOptions) -> Result<Vec<std::path::PathBuf>, String> {
    unimplemented!()
}
