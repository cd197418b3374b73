//! The Lua scripts of `lua/`, embedded in the binary and called by SHA
//! (`EVALSHA`, reloaded by the `redis` crate on `NOSCRIPT`).
//!
//! One list names them (the `scripts!` invocation below): the enum, the
//! files, the loaded `redis::Script`s and the sources all come from it.

use std::sync::OnceLock;

use redis::Script;

const LIB: &str = include_str!("../../lua/lib.lua");

macro_rules! scripts {
    ($($name:ident = $file:literal),* $(,)?) => {
        /// A script of `lua/`, by its file name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Name {
            $($name),*
        }

        impl Name {
            pub const ALL: &'static [Name] = &[$(Name::$name),*];

            /// `reserve` for `lua/reserve.lua`.
            pub fn file(self) -> &'static str {
                match self {
                    $(Name::$name => $file),*
                }
            }

            /// The file as written (before `lib.lua` joins it).
            fn raw(self) -> &'static str {
                match self {
                    $(Name::$name => include_str!(concat!("../../lua/", $file, ".lua"))),*
                }
            }
        }
    };
}

scripts! {
    Reserve = "reserve",
    Confirm = "confirm",
    Cancel = "cancel",
    Extend = "extend",
    Lookup = "lookup",
    Sweep = "sweep",
    Configure = "configure",
    Load = "load",
    Unload = "unload",
    Queue = "queue",
    Admit = "admit",
    Inspect = "inspect",
    Repair = "repair",
    Steer = "steer",
    Held = "held",
}

impl Name {
    pub fn parse(file: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|n| n.file() == file)
    }

    /// The source Redis runs (see [`compose`]).
    pub fn source(self) -> &'static str {
        &composed()[self as usize].1
    }
}

/// `lib.lua` on one line: its comments dropped, its lines joined. Lua needs
/// no line breaks between statements; the tests below check that nothing in
/// `lib.lua` depends on one (a `--` inside a string, a line opening with
/// `(`, a long bracket).
fn lib_on_one_line() -> String {
    LIB.lines()
        .map(|line| line.split_once("--").map_or(line, |(code, _)| code).trim())
        .filter(|code| !code.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A script's source as Redis runs it: its `#!lua` line, then `lib.lua` on
/// one line, prepended to the script's own second line (a comment in every
/// script). One string, so each script stays a single atomic call; and
/// every line of the script keeps its number, so an error Redis reports
/// at `user_script:N` is line N of `lua/<name>.lua`.
pub fn compose(src: &str) -> String {
    let (shebang, body) = src.split_once('\n').unwrap_or((src, ""));
    let lib = lib_on_one_line();
    let mut out = String::with_capacity(src.len() + lib.len() + 2);
    out.push_str(shebang);
    out.push('\n');
    out.push_str(&lib);
    out.push(' ');
    out.push_str(body);
    out
}

/// (SHA1, composed source) of every script, in [`Name::ALL`] order.
fn composed() -> &'static [(String, String)] {
    static ALL: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ALL.get_or_init(|| {
        Name::ALL
            .iter()
            .map(|n| {
                let src = compose(n.raw());
                (Script::new(&src).get_hash().to_string(), src)
            })
            .collect()
    })
}

/// The composed source of one script by file name (`flashgate script
/// <name>` prints it, e.g. for `redis-benchmark`).
pub fn source(name: &str) -> Option<&'static str> {
    Name::parse(name).map(Name::source)
}

/// The composed source of the script whose SHA1 is `sha` (to send it with
/// `EVAL` to a cluster node that answered NOSCRIPT).
pub fn source_by_sha(sha: &str) -> Option<&'static str> {
    composed()
        .iter()
        .find(|(h, _)| h.eq_ignore_ascii_case(sha))
        .map(|(_, src)| src.as_str())
}

/// The `redis::Script` of each name, built once.
pub struct Scripts(Vec<Script>);

impl Scripts {
    pub fn new() -> Self {
        Self(composed().iter().map(|(_, src)| Script::new(src)).collect())
    }

    pub fn get(&self, name: Name) -> &Script {
        &self.0[name as usize]
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
        for name in Name::ALL {
            let composed = name.source();
            assert!(
                composed.starts_with("#!lua"),
                "{name:?} must open with its #!lua flags line"
            );
            assert!(
                composed.contains("local function now_ms()"),
                "{name:?} lacks lib.lua"
            );
            assert!(
                !composed.contains("allow-oom"),
                "{name:?} must be refused whole at maxmemory"
            );
            assert!(
                !composed.contains("MAXLEN"),
                "{name:?} must never trim the stream"
            );
        }
        assert!(source("lookup")
            .expect("lookup")
            .starts_with("#!lua flags=no-writes"));
        assert!(source("nope").is_none());
        let reserve = source("reserve").expect("reserve");
        let sha = Script::new(reserve).get_hash().to_string();
        assert_eq!(source_by_sha(&sha), Some(reserve));
        assert_eq!(source_by_sha("0000"), None);
    }

    #[test]
    fn every_line_of_a_script_keeps_its_number() {
        for name in Name::ALL {
            let raw: Vec<&str> = name.raw().lines().collect();
            let composed: Vec<&str> = name.source().lines().collect();
            assert_eq!(raw.len(), composed.len(), "{name:?}");
            for (i, (r, c)) in raw.iter().zip(&composed).enumerate().skip(2) {
                assert_eq!(r, c, "{name:?} line {}", i + 1);
            }
            assert!(composed[1].ends_with(raw[1]), "{name:?} line 2");
        }
    }

    #[test]
    fn lib_survives_being_joined_on_one_line() {
        assert!(!LIB.contains("[["), "long brackets do not survive joining");
        for line in LIB.lines() {
            let code = line.split_once("--").map_or(line, |(code, _)| code);
            assert_eq!(
                code.matches('\'').count() % 2,
                0,
                "a `--` inside a string in lib.lua: {line}"
            );
            assert!(
                !code.trim_start().starts_with('('),
                "a line opening with `(` would call the line before it: {line}"
            );
        }
    }
}
