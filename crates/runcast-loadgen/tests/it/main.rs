//! The load client against real servers, small: so the benchmark cannot rot unnoticed.

mod fanout;
