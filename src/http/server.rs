//! (placeholder)
pub struct RunningServer {
    pub addr: std::net::SocketAddr,
    pub server: actix_web::dev::Server,
}
pub async fn start(
    _: crate::config::ServerConfig,
) -> Result<RunningServer, crate::error::StartError> {
    unimplemented!()
}
