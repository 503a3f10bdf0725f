//! The Tencent Cloud IM REST client (placeholder until the client issue lands).
