//! What the benchmark examples share: finding the release binary, and child processes that are
//! killed however the benchmark ends.

#![allow(dead_code)] // each example uses a part

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The `attrsync` binary next to the running example (`target/<profile>/attrsync`), or
/// `ATTRSYNC_BIN`.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ATTRSYNC_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the benchmark's own path");
    exe.parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/examples")
        .join("attrsync")
}

/// Kills the child when the benchmark ends, however it ends.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin emulator --listen 127.0.0.1:0 --attributes sex,city,tier ARGS` with its public
/// demo key; returns it and the address it printed.
pub fn emulator(bin: &std::path::Path, args: &[&str]) -> (Guard, String) {
    let mut child = Command::new(bin)
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--attributes",
            "sex,city,tier",
        ])
        .args(args)
        .env_remove("TIM_SECRET_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start attrsync emulator");
    let mut addr = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut addr)
        .unwrap();
    (Guard(child), addr.trim().to_owned())
}
