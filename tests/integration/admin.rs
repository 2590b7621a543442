//! Control-plane behaviour over real sockets.
