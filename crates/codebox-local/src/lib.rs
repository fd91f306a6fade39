//! LocalBox: run code in Jupyter kernels that codebox starts and supervises itself on this
//! machine, over the Jupyter messaging protocol.
