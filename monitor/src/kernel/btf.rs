//! A small reader for the kernel's own `.BTF` section.
//!
//! Distribution kernels ship BTF in the image (CONFIG_DEBUG_INFO_BTF) even
//! when no debug package exists, so struct layouts come from the very build
//! that runs in the guest. Only what introspection needs is decoded: named
//! structs and unions, their members (including members reached through
//! anonymous structs/unions) and type sizes.

use crate::error::{Error, Result};

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One member of a struct or union.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub type_id: u32,
    /// Offset from the start of the containing type, in bits.
    pub bit_offset: u32,
}

/// One decoded BTF type (only the parts used here).
#[derive(Debug, Clone)]
pub struct Type {
    pub kind: u32,
    pub name: String,
    /// `size` for INT/STRUCT/UNION/ENUM/FLOAT/DATASEC, referenced type otherwise.
    pub size_or_type: u32,
    pub members: Vec<Member>,
    /// For arrays: (element type, number of elements).
    pub array: Option<(u32, u32)>,
    /// For enums: (enumerator, value).
    pub enumerators: Vec<(String, i64)>,
}

/// The parsed type table.
pub struct Btf {
    /// Index 0 is `void`.
    types: Vec<Type>,
}

fn u16_at(d: &[u8], o: usize) -> Result<u16> {
    d.get(o..o + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| Error::Btf(format!("truncated at {o}")))
}

fn u32_at(d: &[u8], o: usize) -> Result<u32> {
    d.get(o..o + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| Error::Btf(format!("truncated at {o}")))
}

impl Btf {
    /// Parse a raw `.BTF` section (little endian, as on x86-64).
    pub fn parse(data: &[u8]) -> Result<Btf> {
        if u16_at(data, 0)? != BTF_MAGIC {
            return Err(Error::Btf("bad magic".into()));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_sec = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| Error::Btf("type section out of range".into()))?;
        let strs = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| Error::Btf("string section out of range".into()))?;
        let name = |off: u32| -> String {
            let s = &strs[(off as usize).min(strs.len())..];
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };

        let mut types = vec![Type {
            kind: 0,
            name: String::new(),
            size_or_type: 0,
            members: Vec::new(),
            array: None,
            enumerators: Vec::new(),
        }];
        let mut p = 0usize;
        while p < types_sec.len() {
            let name_off = u32_at(types_sec, p)?;
            let info = u32_at(types_sec, p + 4)?;
            let size_or_type = u32_at(types_sec, p + 8)?;
            p += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 != 0;
            let mut t = Type {
                kind,
                name: name(name_off),
                size_or_type,
                members: Vec::new(),
                array: None,
                enumerators: Vec::new(),
            };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => p += 4,
                KIND_ARRAY => {
                    let elem = u32_at(types_sec, p)?;
                    let n = u32_at(types_sec, p + 8)?;
                    t.array = Some((elem, n));
                    p += 12;
                }
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = p + i * 12;
                        let off = u32_at(types_sec, m + 8)?;
                        t.members.push(Member {
                            name: name(u32_at(types_sec, m)?),
                            type_id: u32_at(types_sec, m + 4)?,
                            bit_offset: if kind_flag { off & 0x00ff_ffff } else { off },
                        });
                    }
                    p += vlen * 12;
                }
                KIND_ENUM => {
                    for i in 0..vlen {
                        let m = p + i * 8;
                        let v = u32_at(types_sec, m + 4)? as i32 as i64;
                        t.enumerators.push((name(u32_at(types_sec, m)?), v));
                    }
                    p += vlen * 8;
                }
                KIND_ENUM64 => {
                    for i in 0..vlen {
                        let m = p + i * 12;
                        let lo = u32_at(types_sec, m + 4)? as u64;
                        let hi = u32_at(types_sec, m + 8)? as u64;
                        t.enumerators
                            .push((name(u32_at(types_sec, m)?), ((hi << 32) | lo) as i64));
                    }
                    p += vlen * 12;
                }
                KIND_FUNC_PROTO => p += vlen * 8,
                KIND_DATASEC => p += vlen * 12,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                other => return Err(Error::Btf(format!("unknown kind {other} at {p}"))),
            }
            types.push(t);
        }
        Ok(Btf { types })
    }

    /// Number of types, `void` included.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// True when the table holds nothing but `void`.
    pub fn is_empty(&self) -> bool {
        self.types.len() <= 1
    }

    fn get(&self, id: u32) -> Result<&Type> {
        self.types
            .get(id as usize)
            .ok_or_else(|| Error::Btf(format!("type id {id} out of range")))
    }

    /// Follow typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<u32> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok(id),
            }
        }
        Err(Error::Btf("typedef chain too long".into()))
    }

    /// Find a struct or union with a definition (not a forward declaration).
    pub fn find_composite(&self, name: &str) -> Result<u32> {
        self.types
            .iter()
            .position(|t| {
                (t.kind == KIND_STRUCT || t.kind == KIND_UNION)
                    && t.name == name
                    && (!t.members.is_empty() || t.size_or_type > 0)
            })
            .map(|i| i as u32)
            .ok_or_else(|| Error::MissingType(format!("struct {name}")))
    }

    /// Size in bytes of a type.
    pub fn size_of(&self, id: u32) -> Result<u64> {
        let id = self.resolve(id)?;
        let t = self.get(id)?;
        Ok(match t.kind {
            KIND_PTR => 8,
            KIND_ARRAY => {
                let (elem, n) = t.array.unwrap_or((0, 0));
                self.size_of(elem)? * n as u64
            }
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                t.size_or_type as u64
            }
            _ => return Err(Error::Btf(format!("no size for kind {}", t.kind))),
        })
    }

    /// Find one member by name inside a composite, descending into anonymous
    /// structs and unions. Returns (byte offset, member type id).
    fn member(&self, id: u32, name: &str) -> Result<Option<(u64, u32)>> {
        let t = self.get(self.resolve(id)?)?;
        for m in &t.members {
            if m.name == name {
                return Ok(Some((m.bit_offset as u64 / 8, m.type_id)));
            }
        }
        for m in &t.members {
            if m.name.is_empty() {
                if let Some((off, ty)) = self.member(m.type_id, name)? {
                    return Ok(Some((m.bit_offset as u64 / 8 + off, ty)));
                }
            }
        }
        Ok(None)
    }

    /// Byte offset of a dotted member path inside `struct_name`,
    /// e.g. `("task_struct", "thread_info.flags")`. Returns the offset and
    /// the size of the final member.
    pub fn offset_of(&self, struct_name: &str, path: &str) -> Result<(u64, u64)> {
        let mut id = self.find_composite(struct_name)?;
        let mut off = 0u64;
        for part in path.split('.') {
            let (o, ty) = self.member(id, part)?.ok_or_else(|| {
                Error::MissingType(format!("{struct_name}.{path}: no member {part}"))
            })?;
            off += o;
            id = ty;
        }
        Ok((off, self.size_of(id)?))
    }

    /// Size of a named struct or union.
    pub fn struct_size(&self, name: &str) -> Result<u64> {
        self.size_of(self.find_composite(name)?)
    }

    /// Value of an enumerator, searched in every enum (e.g. `PG_dirty`).
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        self.types
            .iter()
            .filter(|t| t.kind == KIND_ENUM || t.kind == KIND_ENUM64)
            .flat_map(|t| t.enumerators.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Name of a type (empty for anonymous ones).
    pub fn type_name(&self, id: u32) -> Result<&str> {
        Ok(&self.get(id)?.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a tiny BTF blob by hand: `struct s { int a; struct { long b; }; }`.
    fn tiny() -> Vec<u8> {
        let strs = b"\0int\0s\0a\0long\0b\0".to_vec();
        let mut ty = Vec::new();
        let push = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
        // 1: int (size 4)
        push(&mut ty, 1);
        push(&mut ty, KIND_INT << 24);
        push(&mut ty, 4);
        push(&mut ty, 32);
        // 2: long (size 8)
        push(&mut ty, 9);
        push(&mut ty, KIND_INT << 24);
        push(&mut ty, 8);
        push(&mut ty, 64);
        // 3: anonymous struct { long b; } size 8
        push(&mut ty, 0);
        push(&mut ty, (KIND_STRUCT << 24) | 1);
        push(&mut ty, 8);
        push(&mut ty, 14);
        push(&mut ty, 2);
        push(&mut ty, 0);
        // 4: struct s { int a; <anon> at 64 bits } size 16
        push(&mut ty, 5);
        push(&mut ty, (KIND_STRUCT << 24) | 2);
        push(&mut ty, 16);
        push(&mut ty, 7);
        push(&mut ty, 1);
        push(&mut ty, 0);
        push(&mut ty, 0);
        push(&mut ty, 3);
        push(&mut ty, 64);
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.push(1);
        out.push(0);
        push(&mut out, 24);
        push(&mut out, 0);
        push(&mut out, ty.len() as u32);
        push(&mut out, ty.len() as u32);
        push(&mut out, strs.len() as u32);
        out.extend_from_slice(&ty);
        out.extend_from_slice(&strs);
        out
    }

    #[test]
    fn members_through_anonymous_structs() {
        let btf = Btf::parse(&tiny()).unwrap();
        assert_eq!(btf.len(), 5);
        assert_eq!(btf.offset_of("s", "a").unwrap(), (0, 4));
        assert_eq!(btf.offset_of("s", "b").unwrap(), (8, 8));
        assert_eq!(btf.struct_size("s").unwrap(), 16);
        assert!(btf.offset_of("s", "c").is_err());
        assert!(btf.find_composite("t").is_err());
    }

    #[test]
    fn rejects_bad_magic() {
        let mut b = tiny();
        b[0] = 0;
        assert!(Btf::parse(&b).is_err());
    }
}
