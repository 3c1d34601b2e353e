//! Pool (filled in below).
