//! AMQP topic matching: to be written.
