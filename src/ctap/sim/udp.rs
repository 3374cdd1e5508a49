//! (placeholder)
#[derive(Debug, Clone)]
pub struct Presence;
impl std::str::FromStr for Presence {
    type Err = String;
    fn from_str(_: &str) -> Result<Self, String> {
        unimplemented!()
    }
}
pub fn run(_: std::net::SocketAddr, _: &std::path::Path, _: Presence) -> std::io::Result<()> {
    unimplemented!()
}
