//! What `cargo xtask vm` and the guest say to each other: the plan travels
//! on the kernel command line (after `--`, which the kernel hands to /init
//! as arguments), the verdicts come back as lines on the serial console.
//!
//! Both the xtask binary and `vm-guest` compile this file, so it holds only
//! what both sides use.

use std::{fmt, str::FromStr};

/// Starts every verdict line on the console.
pub const RESULT: &str = "DNSTRACE-VM-RESULT";
/// The guest's last line: it got through its whole plan.
pub const DONE: &str = "DNSTRACE-VM-DONE";
/// The pseudo-backend under which `--backend auto` is checked.
pub const AUTO: &str = "auto";

/// What the booted kernel should do with one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The backend attaches and captures every message.
    Captures,
    /// The kernel refuses the backend, and the reason dnstrace prints
    /// contains this (the verifier's verdict, not just any line of its log).
    Refused(String),
}

/// One backend and what the kernel should do with it: `NAME=captures` or
/// `NAME=refused:REASON` on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub backend: String,
    pub expect: Expect,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expect {
            Expect::Captures => write!(f, "{}=captures", self.backend),
            Expect::Refused(reason) => write!(f, "{}=refused:{reason}", self.backend),
        }
    }
}

impl FromStr for Step {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (backend, expect) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not BACKEND=captures|refused:REASON"))?;
        let expect = match expect.split_once(':') {
            None if expect == "captures" => Expect::Captures,
            Some(("refused", reason)) if !reason.is_empty() => Expect::Refused(reason.to_owned()),
            _ => return Err(format!("{backend}: unknown expectation {expect:?}")),
        };
        Ok(Self {
            backend: backend.to_owned(),
            expect,
        })
    }
}

/// `DNSTRACE-VM-RESULT backend=NAME PASS|FAIL detail…`, one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub backend: String,
    pub pass: bool,
    pub detail: String,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.pass { "PASS" } else { "FAIL" };
        // Newlines would split the verdict over lines the host never joins.
        let detail = self.detail.replace(['\r', '\n'], " ");
        write!(f, "{RESULT} backend={} {verdict} {detail}", self.backend)
    }
}

impl FromStr for Verdict {
    type Err = String;

    /// Finds the verdict anywhere in the line: kernel messages on the same
    /// console may land in front of it.
    fn from_str(line: &str) -> Result<Self, String> {
        let start = line.find(RESULT).ok_or("no verdict on this line")?;
        let rest = line[start + RESULT.len()..].trim();
        let (backend, rest) = rest
            .strip_prefix("backend=")
            .and_then(|rest| rest.split_once(' '))
            .ok_or_else(|| format!("malformed verdict: {line}"))?;
        let (verdict, detail) = rest.split_once(' ').unwrap_or((rest, ""));
        let pass = match verdict {
            "PASS" => true,
            "FAIL" => false,
            _ => return Err(format!("malformed verdict: {line}")),
        };
        Ok(Self {
            backend: backend.to_owned(),
            pass,
            detail: detail.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_survives_the_command_line() {
        let step = Step {
            backend: "cgroup-skb".into(),
            expect: Expect::Refused("unknown func".into()),
        };
        assert_eq!(step.to_string().parse(), Ok(step));
        let step = Step {
            backend: "cgroup-sockaddr".into(),
            expect: Expect::Captures,
        };
        assert_eq!(step.to_string().parse(), Ok(step));
        for bad in [
            "cgroup-skb",
            "cgroup-skb=maybe",
            "cgroup-skb=refused",
            "x=refused:",
        ] {
            assert!(bad.parse::<Step>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_verdict_is_found_behind_kernel_noise() {
        let verdict = Verdict {
            backend: "cgroup-sockaddr".into(),
            pass: false,
            detail: "two\nlines".into(),
        };
        let line = format!("[   12.3] random: crng init done{verdict}\r");
        assert_eq!(
            line.parse(),
            Ok(Verdict {
                detail: "two lines".into(),
                ..verdict
            })
        );
        assert!(
            "DNSTRACE-VM-RESULT backend=x MAYBE"
                .parse::<Verdict>()
                .is_err()
        );
    }
}
