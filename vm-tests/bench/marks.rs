//! The serial-console marker protocol (vm-tests/README.md, "Markers").
//!
//! A guest says where it is by writing a line to its first serial port:
//!
//! ```text
//! HK-MARK:<name>[ <detail>]
//! ```
//!
//! `<name>` is `[A-Za-z0-9._-]+`; `<detail>` is the rest of the line. Kernel messages may be
//! printed on the same console, so a marker is recognised anywhere in a line. A name ending in
//! `-failed` means the guest gave up: waiting for any other marker stops there.

pub const PREFIX: &str = "HK-MARK:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub name: String,
    pub detail: String,
}

impl Mark {
    pub fn is_failure(&self) -> bool {
        self.name.ends_with("-failed")
    }
}

/// The markers in one line of console output (usually zero or one).
pub fn parse_line(line: &str) -> Vec<Mark> {
    let mut marks = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(PREFIX) {
        let after = &rest[at + PREFIX.len()..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let tail = &after[name_len..];
        let next = tail.find(PREFIX).unwrap_or(tail.len());
        if !name.is_empty() {
            marks.push(Mark {
                name: name.to_string(),
                detail: tail[..next].trim().to_string(),
            });
        }
        rest = &tail[next..];
    }
    marks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_alone_on_a_line() {
        assert_eq!(
            parse_line("HK-MARK:ready 0f1e2d"),
            vec![Mark {
                name: "ready".into(),
                detail: "0f1e2d".into()
            }]
        );
    }

    #[test]
    fn marker_after_kernel_noise_and_carriage_return() {
        let m = parse_line("[    3.1] random: crng init done\rHK-MARK:initrd\r");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, "initrd");
        assert_eq!(m[0].detail, "");
    }

    #[test]
    fn two_markers_on_one_line_and_failures() {
        let m = parse_line("HK-MARK:a x HK-MARK:ignition-failed");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].detail, "x");
        assert!(m[1].is_failure());
        assert!(!m[0].is_failure());
    }

    #[test]
    fn prefix_without_name_is_not_a_marker() {
        assert!(parse_line("HK-MARK: nothing").is_empty());
        assert!(parse_line("plain line").is_empty());
    }
}
