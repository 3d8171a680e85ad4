// sqlx::migrate! embeds migrations at compile time: rebuild when they change,
// or a new migration would be silently missing from the binary.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
