//! Mock vhost-user backends for testing the generic vhost-user device.
