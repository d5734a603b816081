pub mod attack;
pub mod cluster;
pub mod jobs;
pub mod s3server;
