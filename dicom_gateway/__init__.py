"""The DICOM gateway: a pynetdicom Storage SCP that stores, records and queues what it receives."""
