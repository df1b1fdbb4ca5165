// Programs are linked with `-Tuser.ld` (.cargo/config.toml); the linker finds the script on
// the search path this build script adds, which propagates to every dependent binary.
fn main() {
    let out = std::env::var("OUT_DIR").unwrap();
    std::fs::copy("user.ld", format!("{out}/user.ld")).unwrap();
    println!("cargo:rustc-link-search={out}");
    println!("cargo:rerun-if-changed=user.ld");
}
