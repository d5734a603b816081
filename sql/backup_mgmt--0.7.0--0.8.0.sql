-- backup_mgmt 0.7.0 -> 0.8.0.  Hand-written; never DROP TABLE here.
--
-- Azure Blob storage targets: remote_type 'azure' (storage now goes through the object_store
-- crate, for S3 and Azure alike).  Only the check of remote_type's vocabulary changes, widened,
-- so every existing row stays valid.

ALTER TABLE backup_management.remote_backup_configs
    DROP CONSTRAINT remote_backup_configs_remote_type_check,
    ADD CONSTRAINT remote_backup_configs_remote_type_check
        CHECK (remote_type IN ('s3', 'azure', 'filesystem', 'sftp', 'rsync'));
COMMENT ON COLUMN backup_management.remote_backup_configs.remote_type IS 's3, azure, filesystem, sftp or rsync';
COMMENT ON COLUMN backup_management.remote_backup_configs.remote_path IS 'Bucket/prefix, container/prefix or directory on the target';
