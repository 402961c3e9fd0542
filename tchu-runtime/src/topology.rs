//! Declares the exchange, queues and bindings. STUB
