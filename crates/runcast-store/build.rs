// `sqlx::migrate!` embeds migrations/ at compile time and the checked queries read .sqlx/:
// rebuild when either changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=.sqlx");
}
