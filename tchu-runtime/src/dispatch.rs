//! Dispatch loop. STUB
