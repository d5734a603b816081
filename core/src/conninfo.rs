//! libpq connection strings for the programs backup_mgmt runs against the local server.

/// Where and as whom the programs connect: the cluster's own socket and port, and a role.
#[derive(Debug, Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// The server options every database session backup_mgmt opens carries.
pub const PINNED_OPTIONS: &str = "-c search_path=pg_catalog,pg_temp";

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
    /// The connection string for `dbname` (None: a physical replication connection).  A
    /// database session gets `search_path = pg_catalog, pg_temp` from the client, which outranks
    /// whatever the database or role set: nothing backup_mgmt runs there can resolve to an
    /// object a user planted.
    pub fn conninfo(&self, dbname: Option<&str>) -> String {
        self.conninfo_with(dbname, "")
    }

    /// `conninfo` whose database session also carries `extra` server options (`-c name=value`
    /// words, no spaces in a value), after the pinned ones.
    pub fn conninfo_with(&self, dbname: Option<&str>, extra: &str) -> String {
        let mut s = format!(
            "host={} port={} user={} application_name='backup_mgmt' connect_timeout=30",
            quote_value(&self.host),
            self.port,
            quote_value(&self.user)
        );
        if let Some(db) = dbname {
            s.push_str(" dbname=");
            s.push_str(&quote_value(db));
            s.push_str(" options=");
            let options = match extra.trim() {
                "" => PINNED_OPTIONS.to_owned(),
                more => format!("{PINNED_OPTIONS} {more}"),
            };
            s.push_str(&quote_value(&options));
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
        assert!(
            s.ends_with(" dbname='host=evil port=1' options='-c search_path=pg_catalog,pg_temp'"),
            "{s}"
        );
        assert_eq!(quote_value(r"a'b\c"), r"'a\'b\\c'");
        assert!(!c.conninfo(None).contains("dbname"));
    }
}
