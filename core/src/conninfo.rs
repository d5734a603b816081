//! libpq connection strings for the programs backup_mgmt runs against the local server.

/// Where and as whom the programs connect: the cluster's own socket and port, and a role.
#[derive(Debug, Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// A libpq connection-string value, always quoted, so that a database named `host=evil` stays a
/// database name and cannot add keywords.
pub fn quote_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

impl Connection {
    /// The connection string for `dbname` (None: a physical replication connection).
    pub fn conninfo(&self, dbname: Option<&str>) -> String {
        let mut s = format!(
            "host={} port={} user={} application_name='backup_mgmt' connect_timeout=30",
            quote_value(&self.host),
            self.port,
            quote_value(&self.user)
        );
        if let Some(db) = dbname {
            s.push_str(" dbname=");
            s.push_str(&quote_value(db));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_quotes_every_value() {
        let c = Connection {
            host: "/var/run/postgresql".into(),
            port: 5432,
            user: "postgres".into(),
        };
        let s = c.conninfo(Some("host=evil port=1"));
        assert!(s.ends_with(" dbname='host=evil port=1'"), "{s}");
        assert_eq!(quote_value(r"a'b\c"), r"'a\'b\\c'");
        assert!(!c.conninfo(None).contains("dbname"));
    }
}
