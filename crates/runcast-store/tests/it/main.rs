//! The store against a real PostgreSQL (runcast-testkit), each test on its own database.

mod reads;
