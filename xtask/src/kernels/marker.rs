//! The lines the guest prints on its serial console for the host to read:
//! defined once, written into the init script and parsed back from the log.
//!
//! The init script prints each marker with `echo`, its fields filled by
//! shell expressions; the host finds the same markers in the console log,
//! their fields filled by values. Both go through [`Marker`]'s one `Display`
//! implementation, so the two sides cannot drift apart.

use std::fmt;

/// What every marker starts with; how a marker is found in a console line
/// that kernel messages may share.
const PREFIX: &str = "@@VXTRACE-";

/// The key of a test's exit code in [`Marker::TestEnded`].
const EXIT_CODE_KEY: &str = "rc=";

/// The key of a test's duration in [`Marker::TestEnded`].
const SECONDS_KEY: &str = "secs=";

/// What fills a marker's fields: values read back from the console
/// ([`Values`]) or the shell expressions the init script prints them with
/// ([`ShellWords`]).
pub trait Fields {
    /// Free text and names (a test id, the kernel's facts).
    type Text: fmt::Display;
    /// A test's exit code.
    type ExitCode: fmt::Display;
    /// A test's duration.
    type Seconds: fmt::Display;
}

/// Fields as read from the console log.
#[derive(Debug, PartialEq)]
pub enum Values {}

impl Fields for Values {
    type Text = String;
    type ExitCode = i32;
    type Seconds = Seconds;
}

/// Fields as the init script's shell expressions.
pub enum ShellWords {}

impl Fields for ShellWords {
    type Text = &'static str;
    type ExitCode = &'static str;
    type Seconds = &'static str;
}

/// A test's duration as the guest measures it: in hundredths of a second,
/// so it is shown with two decimals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Seconds(pub f64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.0)
    }
}

/// One line the guest prints for the host.
#[derive(Debug, PartialEq)]
pub enum Marker<F: Fields = Values> {
    /// The guest is up; what it found about its kernel (BTF, kprobes, ...),
    /// as `key=value` words.
    Kernel { facts: F::Text },
    /// A test left out because an earlier one failed (without --keep-going).
    TestSkipped { test: F::Text },
    /// A test starts; its output follows.
    TestBegun { test: F::Text },
    /// A test finished (or was killed: exit code 137).
    TestEnded {
        test: F::Text,
        exit_code: F::ExitCode,
        secs: F::Seconds,
    },
    /// Every test has run; the guest powers off.
    Done,
}

/// The kinds of [`Marker`], without their fields.
#[derive(Clone, Copy)]
enum Kind {
    Kernel,
    TestSkipped,
    TestBegun,
    TestEnded,
    Done,
}

impl Kind {
    const ALL: [Self; 5] = [
        Self::Kernel,
        Self::TestSkipped,
        Self::TestBegun,
        Self::TestEnded,
        Self::Done,
    ];

    /// The word after [`PREFIX`] that names the marker.
    fn tag(self) -> &'static str {
        match self {
            Self::Kernel => "KERNEL",
            Self::TestSkipped => "TEST-SKIP",
            Self::TestBegun => "TEST-BEGIN",
            Self::TestEnded => "TEST-END",
            Self::Done => "DONE",
        }
    }
}

impl<F: Fields> Marker<F> {
    fn kind(&self) -> Kind {
        match self {
            Self::Kernel { .. } => Kind::Kernel,
            Self::TestSkipped { .. } => Kind::TestSkipped,
            Self::TestBegun { .. } => Kind::TestBegun,
            Self::TestEnded { .. } => Kind::TestEnded,
            Self::Done => Kind::Done,
        }
    }
}

/// The whole line: prefix and tag, then the fields.
impl<F: Fields> fmt::Display for Marker<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.kind().tag())?;
        match self {
            Self::Kernel { facts } => write!(f, " {facts}"),
            Self::TestSkipped { test } | Self::TestBegun { test } => write!(f, " {test}"),
            Self::TestEnded {
                test,
                exit_code,
                secs,
            } => write!(f, " {test} {EXIT_CODE_KEY}{exit_code} {SECONDS_KEY}{secs}"),
            Self::Done => Ok(()),
        }
    }
}

impl Marker<Values> {
    /// The marker in a console line, if any; kernel messages can share the
    /// line, ahead of it. Lenient where the console may have garbled a field
    /// (an unreadable exit code is -1, an unreadable duration 0), so that a
    /// test that ran is still reported as having run.
    pub fn find(line: &str) -> Option<Self> {
        let at = line.find(PREFIX)?;
        let mut words = line[at..].split_whitespace();
        let tag = words.next()?.strip_prefix(PREFIX)?;
        let kind = Kind::ALL.into_iter().find(|k| k.tag() == tag)?;
        Self::read(kind, words)
    }

    /// A marker of `kind`, with its fields read from `words`.
    fn read<'a>(kind: Kind, mut words: impl Iterator<Item = &'a str>) -> Option<Self> {
        Some(match kind {
            Kind::Kernel => Self::Kernel {
                facts: words.collect::<Vec<_>>().join(" "),
            },
            Kind::TestSkipped => Self::TestSkipped {
                test: words.next()?.to_string(),
            },
            Kind::TestBegun => Self::TestBegun {
                test: words.next()?.to_string(),
            },
            Kind::TestEnded => {
                let test = words.next().unwrap_or_default().to_string();
                let mut exit_code = -1;
                let mut secs = Seconds(0.0);
                for w in words {
                    if let Some(v) = w.strip_prefix(EXIT_CODE_KEY) {
                        exit_code = v.parse().unwrap_or(-1);
                    } else if let Some(v) = w.strip_prefix(SECONDS_KEY) {
                        secs = Seconds(v.parse().unwrap_or(0.0));
                    }
                }
                Self::TestEnded {
                    test,
                    exit_code,
                    secs,
                }
            }
            Kind::Done => Self::Done,
        })
    }

    /// The line without its prefix and tag: what progress messages show.
    pub fn fields(&self) -> String {
        let line = self.to_string();
        let tag_end = PREFIX.len() + self.kind().tag().len();
        line[tag_end..].trim_start().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One marker of every kind.
    fn every_marker() -> Vec<Marker> {
        let markers = vec![
            Marker::Kernel {
                facts: "release=6.1.0-56-cloud-amd64 btf=yes kprobes=no memlock_kib=8192 \
                        clocksource=tsc"
                    .to_string(),
            },
            Marker::TestSkipped {
                test: "tcp::nat_and_time_wait_reuse_reject_syns".to_string(),
            },
            Marker::TestBegun {
                test: "overlay::ipv6_underlay".to_string(),
            },
            Marker::TestEnded {
                test: "drops::host_firewall_on_the_vxlan_port".to_string(),
                exit_code: 137,
                secs: Seconds(300.07),
            },
            Marker::Done,
        ];
        let tags: Vec<&str> = markers.iter().map(|m| m.kind().tag()).collect();
        for kind in Kind::ALL {
            assert!(tags.contains(&kind.tag()), "no {} marker", kind.tag());
        }
        markers
    }

    #[test]
    fn every_marker_reads_back_as_written() {
        for m in every_marker() {
            let line = m.to_string();
            assert_eq!(Marker::find(&line), Some(m), "{line}");
        }
    }

    #[test]
    fn markers_are_found_behind_kernel_messages() {
        for m in every_marker() {
            let line = format!("[   12.345678] random: crng init done{m}");
            assert_eq!(Marker::find(&line), Some(m), "{line}");
        }
    }

    #[test]
    fn test_end_as_the_guest_prints_it() {
        // What the init script's `echo` prints once the shell has filled in
        // the fields: the duration in hundredths.
        let printed = Marker::<ShellWords>::TestEnded {
            test: "overlay::x",
            exit_code: "1",
            secs: "12.50",
        }
        .to_string();
        let m = Marker::find(&printed).unwrap();
        let expected = Marker::TestEnded {
            test: "overlay::x".to_string(),
            exit_code: 1,
            secs: Seconds(12.5),
        };
        assert_eq!(m, expected);
        assert_eq!(m.to_string(), printed);
        assert!(printed.ends_with(&format!(" {}", m.fields())));
    }

    #[test]
    fn garbled_test_end_fields_still_end_the_test() {
        let printed = Marker::<ShellWords>::TestEnded {
            test: "overlay::x",
            exit_code: "1[  3.2]",
            secs: "",
        }
        .to_string();
        let expected = Marker::TestEnded {
            test: "overlay::x".to_string(),
            exit_code: -1,
            secs: Seconds(0.0),
        };
        assert_eq!(Marker::find(&printed), Some(expected));
    }

    #[test]
    fn lines_without_a_known_marker() {
        assert_eq!(Marker::find("test result: ok. 1 passed"), None);
        assert_eq!(Marker::find(&format!("{PREFIX}SOMETHING-ELSE x")), None);
        let no_test = Marker::<ShellWords>::TestBegun { test: "" }.to_string();
        assert_eq!(Marker::find(&no_test), None);
    }
}
