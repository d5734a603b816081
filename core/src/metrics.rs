//! The Prometheus text exposition format, for `backup_mgmt.metrics()`.

use std::fmt::Write as _;

/// One sample of a metric: its labels and value.
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// A metric family.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: &'static str,
    pub samples: Vec<Sample>,
}

/// A label value escaped as the exposition format requires (backslash, double quote, newline).
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Renders metric families as Prometheus text.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for s in &f.samples {
            out.push_str(f.name);
            if !s.labels.is_empty() {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", labels.join(","));
            }
            let _ = writeln!(out, " {}", s.value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format_escapes_labels() {
        let text = render(&[Family {
            name: "backup_mgmt_x",
            help: "Help.",
            kind: "gauge",
            samples: vec![Sample {
                labels: vec![("database", "we\"ird\\db\nname".into())],
                value: 1.5,
            }],
        }]);
        assert_eq!(
            text,
            "# HELP backup_mgmt_x Help.\n# TYPE backup_mgmt_x gauge\nbackup_mgmt_x{database=\"we\\\"ird\\\\db\\nname\"} 1.5\n"
        );
    }
}
