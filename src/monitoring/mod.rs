//! What operators watch: Prometheus metrics (the views are SQL, in `sql/schema.sql`).

pub mod metrics;
