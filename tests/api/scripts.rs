//! The Lua scripts as Redis runs them: `lib.lua` joins each script without
//! moving its lines, so an error Redis reports at `user_script:N` is line N
//! of `lua/<name>.lua`.

use flashgate::gate::ScriptName;

use crate::support::*;

/// Every script asserts its arity on a known line: called with no keys at
/// all, the error Redis raises names exactly that line of the file.
#[tokio::test]
async fn a_script_error_points_at_its_own_file_and_line() {
    let mut conn = test_redis().await;
    for name in ScriptName::ALL {
        let file = std::fs::read_to_string(format!(
            "{}/lua/{}.lua",
            env!("CARGO_MANIFEST_DIR"),
            name.file()
        ))
        .expect("script file");
        let line = file
            .lines()
            .position(|l| l.starts_with("assert(#KEYS"))
            .map(|i| i + 1)
            .expect("an arity assert");
        // One key and no arguments: wrong for every script. The key routes
        // the EVAL to a primary on Redis Cluster (a keyless one may land on
        // a replica, which refuses a script that may write).
        let err = redis::cmd("EVAL")
            .arg(name.source())
            .arg(1)
            .arg("{arity-probe}")
            .query_async::<redis::Value>(&mut conn)
            .await
            .expect_err("wrong arity");
        let detail = err.detail().unwrap_or_default().to_string();
        assert!(
            detail.contains(&format!("user_script:{line}:")),
            "{}.lua: expected line {line}, Redis said {detail}",
            name.file()
        );
        assert!(
            detail.contains(&format!("{}.lua: wrong arity", name.file())),
            "{detail}"
        );
    }
}
