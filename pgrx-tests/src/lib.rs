pub mod cluster;
pub mod s3server;
