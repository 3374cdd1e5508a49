//! (placeholder)
pub fn run(_: &std::path::Path, _: u16) -> Result<(), String> {
    unimplemented!()
}
