//! The Lua scripts of `lua/`, embedded in the binary and called by SHA
//! (`EVALSHA`, reloaded by the `redis` crate on `NOSCRIPT`).

use redis::Script;

const LIB: &str = include_str!("../../lua/lib.lua");

/// A script's source as Redis runs it: its `#!lua` line, then `lib.lua`,
/// then its body. One string, so each script stays a single atomic call.
pub fn compose(src: &str) -> String {
    let (shebang, body) = src.split_once('\n').unwrap_or((src, ""));
    let mut out = String::with_capacity(src.len() + LIB.len() + 1);
    out.push_str(shebang);
    out.push('\n');
    out.push_str(LIB);
    out.push_str(body);
    out
}

/// Every script, by name, as in `lua/<name>.lua`.
pub const SOURCES: &[(&str, &str)] = &[
    ("reserve", include_str!("../../lua/reserve.lua")),
    ("confirm", include_str!("../../lua/confirm.lua")),
    ("cancel", include_str!("../../lua/cancel.lua")),
    ("extend", include_str!("../../lua/extend.lua")),
    ("lookup", include_str!("../../lua/lookup.lua")),
    ("sweep", include_str!("../../lua/sweep.lua")),
    ("configure", include_str!("../../lua/configure.lua")),
    ("load", include_str!("../../lua/load.lua")),
    ("admit", include_str!("../../lua/admit.lua")),
    ("inspect", include_str!("../../lua/inspect.lua")),
    ("repair", include_str!("../../lua/repair.lua")),
    ("unload", include_str!("../../lua/unload.lua")),
];

/// The composed source of one script (`flashgate script <name>` prints it,
/// e.g. for `redis-benchmark`).
pub fn source(name: &str) -> Option<String> {
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, src)| compose(src))
}

/// The composed source of the script whose SHA1 is `sha` (to send it with
/// `EVAL` to a cluster node that answered NOSCRIPT).
pub fn source_by_sha(sha: &str) -> Option<&'static str> {
    static BY_SHA: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    BY_SHA
        .get_or_init(|| {
            SOURCES
                .iter()
                .map(|(_, src)| {
                    let src = compose(src);
                    (Script::new(&src).get_hash().to_string(), src)
                })
                .collect()
        })
        .iter()
        .find(|(h, _)| h.eq_ignore_ascii_case(sha))
        .map(|(_, src)| src.as_str())
}

pub struct Scripts {
    pub reserve: Script,
    pub confirm: Script,
    pub cancel: Script,
    pub extend: Script,
    pub lookup: Script,
    pub sweep: Script,
    pub configure: Script,
    pub load: Script,
    pub admit: Script,
    pub inspect: Script,
    pub repair: Script,
    pub unload: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let s = |src: &str| Script::new(&compose(src));
        let [reserve, confirm, cancel, extend, lookup, sweep, configure, load, admit, inspect, repair, unload] =
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11].map(|i| s(SOURCES[i].1));
        Self {
            reserve,
            confirm,
            cancel,
            extend,
            lookup,
            sweep,
            configure,
            load,
            admit,
            inspect,
            repair,
            unload,
        }
    }

    pub fn all(&self) -> [&Script; 12] {
        [
            &self.reserve,
            &self.confirm,
            &self.cancel,
            &self.extend,
            &self.lookup,
            &self.sweep,
            &self.configure,
            &self.load,
            &self.admit,
            &self.inspect,
            &self.repair,
            &self.unload,
        ]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composed_scripts_keep_their_flags_line_first() {
        for (name, src) in SOURCES {
            let composed = compose(src);
            assert!(
                composed.starts_with("#!lua"),
                "{name} must open with its #!lua flags line"
            );
            assert!(
                composed.contains("local function now_ms()"),
                "{name} lacks lib.lua"
            );
            assert!(
                !composed.contains("allow-oom"),
                "{name} must be refused whole at maxmemory"
            );
            assert!(
                !composed.contains("MAXLEN"),
                "{name} must never trim the stream"
            );
        }
        assert!(source("lookup")
            .expect("lookup")
            .starts_with("#!lua flags=no-writes"));
        assert!(source("nope").is_none());
        let reserve = source("reserve").expect("reserve");
        let sha = Script::new(&reserve).get_hash().to_string();
        assert_eq!(source_by_sha(&sha), Some(reserve.as_str()));
        assert_eq!(source_by_sha("0000"), None);
    }
}
