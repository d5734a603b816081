pub mod attack;
pub mod cluster;
pub mod jobs;
pub mod program;
pub mod s3server;
