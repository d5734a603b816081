pub mod attack;
pub mod azurite;
pub mod cluster;
pub mod jobs;
pub mod program;
pub mod s3server;
pub mod stall;
pub mod upgrade;
