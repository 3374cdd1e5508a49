//! (placeholder, filled in by the card layer work)
