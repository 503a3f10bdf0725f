//! Generates a large config repository for benchmarks: `gen_users --users N --files F OUT`.
//!
//! Writes `OUT/attrsync.yaml`, `OUT/users/part-NNN.yaml` (flow mappings, one user a line) and
//! `OUT/snapshot.jsonl` (the same users, for `attrsync state import` to seed a snapshot that
//! already holds them all). Deterministic: the same arguments write the same bytes.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

const CITIES: [&str; 8] = [
    "NewYork", "ShenZhen", "Boston", "Paris", "Tokyo", "Berlin", "Lagos", "Lima",
];
const TIERS: [&str; 3] = ["free", "gold", "platinum"];

fn main() -> std::io::Result<()> {
    let mut users: u64 = 100_000;
    let mut files: u64 = 10;
    let mut out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--users" => users = args.next().and_then(|v| v.parse().ok()).expect("--users N"),
            "--files" => files = args.next().and_then(|v| v.parse().ok()).expect("--files N"),
            _ => out = Some(PathBuf::from(arg)),
        }
    }
    let out = out.expect("usage: gen_users --users N --files F OUT");
    let users_dir = out.join("users");
    std::fs::create_dir_all(&users_dir)?;
    std::fs::write(
        out.join("attrsync.yaml"),
        "sdkappid: 1400000000\nidentifier: administrator\nendpoint: embedded\nattributes: [sex, city, tier]\nmax_deletes: 100\n",
    )?;
    let mut snapshot = BufWriter::new(std::fs::File::create(out.join("snapshot.jsonl"))?);
    let per_file = users.div_ceil(files.max(1));
    let mut user = 0;
    for file in 0..files {
        let mut w = BufWriter::new(std::fs::File::create(
            users_dir.join(format!("part-{file:03}.yaml")),
        )?);
        writeln!(w, "defaults:\n  tier: free\nusers:")?;
        for _ in 0..per_file {
            if user == users {
                break;
            }
            let sex = if user % 2 == 0 { "female" } else { "male" };
            let city = CITIES[(user % 8) as usize];
            let tier = TIERS[(user % 3) as usize];
            writeln!(
                w,
                "  user{user:08}: {{sex: {sex}, city: {city}, tier: {tier}}}"
            )?;
            writeln!(
                snapshot,
                r#"{{"user":"user{user:08}","attrs":{{"city":"{city}","sex":"{sex}","tier":"{tier}"}}}}"#
            )?;
            user += 1;
        }
        w.flush()?;
    }
    snapshot.flush()?;
    eprintln!(
        "wrote {user} users in {files} files under {}",
        out.display()
    );
    Ok(())
}
