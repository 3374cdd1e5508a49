//! (placeholder)
pub struct RunningProxy {
    pub addr: std::net::SocketAddr,
    pub server: actix_web::dev::Server,
}
pub async fn start(
    _: crate::config::ProxyConfig,
) -> Result<RunningProxy, crate::error::StartError> {
    unimplemented!()
}
