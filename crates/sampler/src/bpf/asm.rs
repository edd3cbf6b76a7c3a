//! The instructions of the lab's BPF programs: their encoding and an assembler that places them
//! one after another and resolves jumps by label, forward or backward, so that no offset is
//! counted by hand.
//!
//! # References
//! include/uapi/linux/bpf.h and bpf_common.h (`struct bpf_insn`, the classes, sizes, modes and
//! operations, the helpers' numbers); Documentation/bpf/standardization/instruction-set.rst.

use std::os::fd::RawFd;

/// A register: r0 (return values), r1–r5 (arguments, clobbered by calls), r6–r9 (kept across
/// calls), r10 ([`FP`], the read-only frame pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reg(u8);

pub(crate) const R0: Reg = Reg(0);
pub(crate) const R1: Reg = Reg(1);
pub(crate) const R2: Reg = Reg(2);
pub(crate) const R3: Reg = Reg(3);
pub(crate) const R4: Reg = Reg(4);
pub(crate) const R6: Reg = Reg(6);
pub(crate) const R7: Reg = Reg(7);
pub(crate) const R9: Reg = Reg(9);
/// The frame pointer: the stack lies below it (512 bytes).
pub(crate) const FP: Reg = Reg(10);

/// The width of a load or a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Size {
    /// One byte.
    B,
    /// Two bytes.
    H,
    /// Four bytes.
    W,
    /// Eight bytes.
    DW,
}

impl Size {
    /// Its bits in an opcode (`BPF_B`, `BPF_H`, `BPF_W`, `BPF_DW`).
    fn code(self) -> u8 {
        match self {
            Size::B => 0x10,
            Size::H => 0x08,
            Size::W => 0x00,
            Size::DW => 0x18,
        }
    }
}

/// The kernel's helpers the programs call, by their numbers in `enum bpf_func_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Helper {
    /// `bpf_map_lookup_elem(map, key)`: a pointer to the value, or NULL.
    MapLookupElem = 1,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    KtimeGetNs = 5,
    /// `bpf_get_socket_cookie(sk)`.
    GetSocketCookie = 46,
    /// `bpf_seq_write(seq, data, len)`.
    SeqWrite = 127,
    /// `bpf_ringbuf_output(ring, data, size, flags)`.
    RingbufOutput = 130,
}

/// Opcode bits: an instruction's class, source and operation.
mod op {
    // Classes.
    pub const LD: u8 = 0x00;
    pub const LDX: u8 = 0x01;
    pub const ST: u8 = 0x02;
    pub const STX: u8 = 0x03;
    pub const JMP: u8 = 0x05;
    pub const ALU64: u8 = 0x07;
    // Modes of the load and store classes.
    pub const IMM: u8 = 0x00;
    pub const MEM: u8 = 0x60;
    pub const ATOMIC: u8 = 0xc0;
    // Sources of the ALU and jump classes: the immediate or a register.
    pub const K: u8 = 0x00;
    pub const X: u8 = 0x08;
    // ALU operations.
    pub const ADD: u8 = 0x00;
    pub const AND: u8 = 0x50;
    pub const RSH: u8 = 0x70;
    pub const MOV: u8 = 0xb0;
    // Jump operations.
    pub const JEQ: u8 = 0x10;
    pub const JNE: u8 = 0x50;
    pub const CALL: u8 = 0x80;
    pub const EXIT: u8 = 0x90;
    /// The source register of a 64-bit load whose immediate is a map's descriptor.
    pub const PSEUDO_MAP_FD: u8 = 1;
}

/// One instruction, `struct bpf_insn`: the opcode, the destination and source registers (4 bits
/// each), a 16-bit offset and a 32-bit immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn new(code: u8, dst: Reg, src: u8, off: i16, imm: i32) -> Insn {
        Insn { code, regs: (src << 4) | dst.0, off, imm }
    }

    /// The instruction as the kernel reads it, a little-endian `struct bpf_insn` in a word.
    pub(crate) fn raw(self) -> u64 {
        u64::from(self.code)
            | u64::from(self.regs) << 8
            | u64::from(self.off as u16) << 16
            | u64::from(self.imm as u32) << 32
    }
}

/// A place in a program a jump can name.
pub(crate) type Label = &'static str;

/// A program being assembled.
#[derive(Debug, Default)]
pub(crate) struct Asm {
    insns: Vec<Insn>,
    /// Where each label was placed: the index of the instruction that follows it.
    labels: Vec<(Label, usize)>,
    /// The jumps to resolve: the index of each and its label.
    jumps: Vec<(usize, Label)>,
    /// The first label placed twice.
    twice: Option<Label>,
}

/// An assembly that cannot be: a program's mistake, never the kernel's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AsmError {
    /// A jump names a label the program never placed.
    #[error("assemble a BPF program: the label {0:?} is jumped to but never placed")]
    Unresolved(Label),
    /// A label was placed at two places.
    #[error("assemble a BPF program: the label {0:?} is placed twice")]
    Duplicate(Label),
    /// A jump further than an instruction's 16-bit offset reaches.
    #[error("assemble a BPF program: the jump to {0:?} is too far")]
    TooFar(Label),
}

impl Asm {
    fn push(&mut self, insn: Insn) {
        self.insns.push(insn);
    }

    /// `dst = src`.
    pub(crate) fn mov(&mut self, dst: Reg, src: Reg) {
        self.push(Insn::new(op::ALU64 | op::MOV | op::X, dst, src.0, 0, 0));
    }

    /// `dst = imm`.
    pub(crate) fn mov_imm(&mut self, dst: Reg, imm: i32) {
        self.push(Insn::new(op::ALU64 | op::MOV | op::K, dst, 0, 0, imm));
    }

    /// `dst += imm`.
    pub(crate) fn add_imm(&mut self, dst: Reg, imm: i32) {
        self.push(Insn::new(op::ALU64 | op::ADD | op::K, dst, 0, 0, imm));
    }

    /// `dst &= imm`.
    pub(crate) fn and_imm(&mut self, dst: Reg, imm: i32) {
        self.push(Insn::new(op::ALU64 | op::AND | op::K, dst, 0, 0, imm));
    }

    /// `dst >>= src`.
    pub(crate) fn rsh(&mut self, dst: Reg, src: Reg) {
        self.push(Insn::new(op::ALU64 | op::RSH | op::X, dst, src.0, 0, 0));
    }

    /// `dst = *(size *)(src + off)`.
    pub(crate) fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) {
        self.push(Insn::new(op::LDX | op::MEM | size.code(), dst, src.0, off, 0));
    }

    /// `*(size *)(dst + off) = src`.
    pub(crate) fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) {
        self.push(Insn::new(op::STX | op::MEM | size.code(), dst, src.0, off, 0));
    }

    /// `*(size *)(dst + off) = imm`.
    pub(crate) fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) {
        self.push(Insn::new(op::ST | op::MEM | size.code(), dst, 0, off, imm));
    }

    /// `lock *(size *)(dst + off) += src`.
    pub(crate) fn atomic_add(&mut self, size: Size, dst: Reg, off: i16, src: Reg) {
        self.push(Insn::new(op::STX | op::ATOMIC | size.code(), dst, src.0, off, op::ADD.into()));
    }

    /// `dst = map`: a 64-bit load (two instructions) of the map whose descriptor is `fd`, which
    /// the kernel turns into the map itself.
    pub(crate) fn load_map(&mut self, dst: Reg, fd: RawFd) {
        let code = op::LD | op::IMM | Size::DW.code();
        self.push(Insn::new(code, dst, op::PSEUDO_MAP_FD, 0, fd));
        self.push(Insn::new(0, R0, 0, 0, 0));
    }

    /// `r0 = helper(r1, …, r5)`.
    pub(crate) fn call(&mut self, helper: Helper) {
        self.push(Insn::new(op::JMP | op::CALL, R0, 0, 0, helper as i32));
    }

    /// `return r0`.
    pub(crate) fn exit(&mut self) {
        self.push(Insn::new(op::JMP | op::EXIT, R0, 0, 0, 0));
    }

    /// `if dst == imm goto to`.
    pub(crate) fn jeq_imm(&mut self, dst: Reg, imm: i32, to: Label) {
        self.jump(op::JEQ, dst, imm, to);
    }

    /// `if dst != imm goto to`.
    pub(crate) fn jne_imm(&mut self, dst: Reg, imm: i32, to: Label) {
        self.jump(op::JNE, dst, imm, to);
    }

    fn jump(&mut self, operation: u8, dst: Reg, imm: i32, to: Label) {
        self.jumps.push((self.insns.len(), to));
        self.push(Insn::new(op::JMP | operation | op::K, dst, 0, 0, imm));
    }

    /// Places `label` before the next instruction.
    pub(crate) fn label(&mut self, label: Label) {
        if self.labels.iter().any(|(l, _)| *l == label) {
            self.twice.get_or_insert(label);
        }
        self.labels.push((label, self.insns.len()));
    }

    /// The instructions, each jump's offset the distance to its label.
    pub(crate) fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        if let Some(label) = self.twice {
            return Err(AsmError::Duplicate(label));
        }
        for &(at, to) in &self.jumps {
            let target = self.labels.iter().find(|(l, _)| *l == to).map(|(_, t)| *t);
            let target = target.ok_or(AsmError::Unresolved(to))?;
            // An offset counts from the instruction after the jump.
            let off = target as i64 - at as i64 - 1;
            self.insns[at].off = i16::try_from(off).map_err(|_| AsmError::TooFar(to))?;
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
pub(crate) mod listing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_their_labels_forward_and_backward() {
        let mut a = Asm::default();
        a.label("top");
        a.mov_imm(R0, 0);
        a.jeq_imm(R0, 0, "end"); // 1: over 2 and 3
        a.load_map(R1, 7); // 2 and 3
        a.jne_imm(R0, 1, "top"); // 4: back to 0
        a.label("end");
        a.exit(); // 5
        let p = a.finish().unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!((p[1].off, p[4].off), (3, -5));
        assert_eq!(p[4].raw(), 0x0000_0001_fffb_0055);
    }

    #[test]
    fn an_unplaced_label_is_an_error() {
        let mut a = Asm::default();
        a.jeq_imm(R0, 0, "nowhere");
        a.label("somewhere");
        a.exit();
        assert_eq!(a.finish(), Err(AsmError::Unresolved("nowhere")));
    }

    #[test]
    fn a_label_placed_twice_is_an_error() {
        let mut a = Asm::default();
        a.label("out");
        a.jeq_imm(R0, 0, "out");
        a.label("out");
        a.exit();
        let e = a.finish().unwrap_err();
        assert_eq!(e, AsmError::Duplicate("out"));
        assert_eq!(e.to_string(), "assemble a BPF program: the label \"out\" is placed twice");
    }

    #[test]
    fn a_jump_beyond_sixteen_bits_is_an_error() {
        let mut a = Asm::default();
        a.jeq_imm(R0, 0, "far");
        for _ in 0..=i16::MAX {
            a.mov_imm(R0, 0);
        }
        a.label("far");
        a.exit();
        assert_eq!(a.finish(), Err(AsmError::TooFar("far")));
    }
}
