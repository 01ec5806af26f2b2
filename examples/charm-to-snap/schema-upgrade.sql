-- Stands for the new version's schema tool: the change the new server
-- expects in the restored database. Replace it (or the step's
-- schema_upgrade command) with what your new version ships.
ALTER TABLE machines ADD COLUMN upgraded boolean NOT NULL DEFAULT true;
