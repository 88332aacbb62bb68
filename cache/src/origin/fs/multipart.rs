//! Multipart uploads of `FsOrigin`: each in `<root>/.uploads/<id>/` (its description and one file
//! per part), completed into an object with S3's ETag and checksum rules.

use super::*;

pub(super) const UPLOAD_META: &str = "upload.json";
pub(super) const PART_PREFIX: &str = "part-";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UploadMeta {
    pub bucket: String,
    pub key: String,
    pub headers: ContentHeaders,
    pub initiated: SystemTime,
    /// The checksum the object will keep; each part keeps its checksum of this algorithm.
    #[serde(default)]
    pub checksum: Option<MultipartChecksum>,
}

impl FsOrigin {
    pub(super) fn upload_dir(&self, upload_id: &str) -> OriginResult<PathBuf> {
        let valid = !upload_id.is_empty()
            && upload_id.len() <= 128
            && upload_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if valid {
            Ok(self.uploads.join(upload_id))
        } else {
            Err(OriginError::NoSuchUpload)
        }
    }

    /// The staging directory and description of an upload of `key` into `bucket`.
    pub(super) async fn load_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> OriginResult<(PathBuf, UploadMeta)> {
        let dir = self.upload_dir(upload_id)?;
        let meta_path = dir.join(UPLOAD_META);
        let meta = blocking(move || read_upload_meta(&meta_path)).await?;
        match meta {
            Some(m) if m.bucket == bucket && m.key == key => Ok((dir, m)),
            _ => Err(OriginError::NoSuchUpload),
        }
    }

    /// All uploads in progress, each with its id.
    pub(super) async fn scan_uploads(&self) -> OriginResult<Vec<(String, UploadMeta)>> {
        let uploads = self.uploads.clone();
        Ok(blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&uploads)? {
                let entry = entry?;
                let Ok(id) = entry.file_name().into_string() else {
                    continue;
                };
                if let Some(meta) = read_upload_meta(&entry.path().join(UPLOAD_META))? {
                    out.push((id, meta));
                }
            }
            Ok(out)
        })
        .await?)
    }

    pub(super) async fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        headers: &ContentHeaders,
        checksum: Option<MultipartChecksum>,
    ) -> OriginResult<String> {
        self.bucket(bucket)?;
        validate_key(key)?;
        if let Some(c) = &checksum {
            c.validate()?;
        }
        let id = new_id();
        let meta = UploadMeta {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            headers: headers.clone(),
            initiated: SystemTime::now(),
            checksum,
        };
        let json = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        let staging = self.tmp.join(format!("upload-{id}"));
        let target = self.uploads.join(&id);
        let uploads = self.uploads.clone();
        blocking(move || {
            std::fs::create_dir(&staging)?;
            write_durable(&staging.join(UPLOAD_META), &json)?;
            sync_dir(&staging)?;
            std::fs::rename(&staging, &target)?;
            sync_dir(&uploads)
        })
        .await?;
        Ok(id)
    }

    pub(super) async fn store_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: &PutBody,
        checksums: &Checksums,
    ) -> OriginResult<PutOutput> {
        self.bucket(bucket)?;
        validate_key(key)?;
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(OriginError::rejected(
                400,
                "InvalidArgument",
                format!("Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"),
            ));
        }
        let (dir, upload) = self.load_upload(bucket, key, upload_id).await?;
        // The part keeps its checksum of the upload's algorithm: the one the client sent (and
        // Perch verified), or else one computed here.
        let algorithm = upload.checksum.map(|c| c.algorithm);
        let given = algorithm.and_then(|a| checksums.get(a).map(str::to_owned));
        if let (Some(a), None, Some((other, _))) = (algorithm, &given, checksums.iter().next()) {
            return Err(OriginError::rejected(
                400,
                "InvalidRequest",
                format!(
                    "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
                    a.as_str().to_ascii_lowercase(),
                    other.as_str().to_ascii_lowercase()
                ),
            ));
        }
        let placeholder_sums = match (algorithm, &given) {
            (Some(a), Some(v)) => Checksums::only(a, v.clone()),
            (Some(a), None) => Checksums::only(a, "0".repeat(checksum::base64_len(a))),
            (None, _) => Checksums::default(),
        };
        let placeholder = placeholder_header(key, &ContentHeaders::default(), &placeholder_sums, PLACEHOLDER_ETAG);
        let compute = if given.is_none() { algorithm } else { None };
        let mut writer = self.new_writer(&placeholder, true, compute).await?;
        writer.write_stream(body.stream().await?).await?;
        if writer.size != body.len() {
            return Err(OriginError::rejected(
                400,
                "IncompleteBody",
                format!("the body held {} bytes, not the {} announced", writer.size, body.len()),
            ));
        }
        let kept = match (algorithm, given) {
            (Some(a), Some(v)) => Checksums::only(a, v),
            (Some(a), None) => Checksums::only(a, writer.checksum().unwrap_or_default()),
            (None, _) => Checksums::default(),
        };
        let meta = ObjectMeta {
            size: writer.size,
            etag: writer.etag(),
            last_modified: now_secs(),
            headers: ContentHeaders::default(),
            checksums: kept,
        };
        let temp = writer
            .finish(&StoredHeader {
                key: key.to_owned(),
                meta: meta.clone(),
                parts: Vec::new(),
            })
            .await?;
        let target = dir.join(part_file_name(part_number));
        let temp_path = temp.path.clone();
        let renamed = blocking(move || {
            std::fs::rename(&temp_path, &target)?;
            sync_dir(&dir)
        })
        .await;
        match renamed {
            Ok(()) => temp.disarm(),
            // The upload was completed or aborted meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(OriginError::NoSuchUpload),
            Err(e) => return Err(e.into()),
        }
        Ok(PutOutput {
            etag: meta.etag,
            // Without an algorithm for the upload, the part's checksums are only echoed, as S3 does.
            checksums: if algorithm.is_some() {
                meta.checksums
            } else {
                checksums.clone()
            },
        })
    }

    /// Completes an upload: its object is committed, then its parts go.
    pub(crate) async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        expected: &Expected,
    ) -> OriginResult<PutOutput> {
        let output = self.fold_upload(bucket, key, upload_id, parts, expected).await?;
        self.remove_upload(upload_id).await;
        Ok(output)
    }

    /// Removes a completed upload's parts (a warning if they cannot go: they are only space).
    pub(crate) async fn remove_upload(&self, upload_id: &str) {
        let Ok(dir) = self.upload_dir(upload_id) else {
            return;
        };
        match self.discard_upload_dir(upload_id, dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(upload = %upload_id, error = %e, "could not remove a completed upload's parts"),
        }
    }

    /// Commits the object the parts named make, and keeps the upload with its parts: Perch's
    /// staging area removes them only once the object's version is in the journal, so that a
    /// crash before leaves the upload to be completed again.
    pub(crate) async fn fold_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        expected: &Expected,
    ) -> OriginResult<PutOutput> {
        let b = self.bucket(bucket)?;
        validate_key(key)?;
        let (dir, upload) = self.load_upload(bucket, key, upload_id).await?;
        if parts.is_empty() {
            return Err(OriginError::rejected(
                400,
                "MalformedXML",
                "The XML you provided was not well-formed or did not validate against our published schema",
            ));
        }
        if parts.windows(2).any(|w| w[0].part_number >= w[1].part_number) {
            return Err(OriginError::rejected(
                400,
                "InvalidPartOrder",
                "The list of parts was not in ascending order. Parts must be ordered by part number.",
            ));
        }
        // Every part must exist with its ETag before sizes are looked at, as on S3.
        let wanted: Vec<(i32, String)> = parts.iter().map(|p| (p.part_number, p.etag.clone())).collect();
        let part_dir = dir.clone();
        let found = blocking(move || {
            let mut found = Vec::with_capacity(wanted.len());
            for (number, etag) in wanted {
                let meta = if (1..=MAX_PART_NUMBER).contains(&number) {
                    open_stored(&part_dir.join(part_file_name(number)), None)?.map(|(_, h, _)| h.meta)
                } else {
                    None
                };
                match meta {
                    Some(m) if crate::origin::same_etag(&etag, &m.etag) => found.push(m),
                    _ => return Ok(Err(number)),
                }
            }
            Ok(Ok(found))
        })
        .await?;
        let invalid_part = |number: i32| {
            OriginError::rejected(
                400,
                "InvalidPart",
                format!(
                    "One or more of the specified parts could not be found (part {number}). The part may not have \
                     been uploaded, or the specified entity tag may not match the part's entity tag."
                ),
            )
        };
        let found = found.map_err(invalid_part)?;
        // A checksum the request declares for a part must be the one kept with it.
        for (part, meta) in parts.iter().zip(&found) {
            let differs = part
                .checksums
                .iter()
                .any(|(a, v)| meta.checksums.get(a).is_some_and(|kept| kept != v));
            if differs {
                return Err(invalid_part(part.part_number));
            }
        }
        let upload_checksum = upload.checksum;
        if let Some(c) = upload_checksum
            && c.checksum_type == ChecksumType::Composite
            && let Some(part) = parts.iter().find(|p| p.checksums.get(c.algorithm).is_none())
        {
            return Err(OriginError::rejected(
                400,
                "InvalidRequest",
                format!(
                    "The upload was created using a {} checksum. The complete request must include the checksum for \
                     each part. It was missing for part {} in the request.",
                    c.algorithm.as_str().to_ascii_lowercase(),
                    part.part_number
                ),
            ));
        }
        for (part, meta) in parts.iter().zip(&found).take(parts.len() - 1) {
            if meta.size < MIN_PART_SIZE {
                return Err(OriginError::rejected(
                    400,
                    "EntityTooSmall",
                    format!(
                        "Your proposed upload is smaller than the minimum allowed size (part {} has {} bytes)",
                        part.part_number, meta.size
                    ),
                ));
            }
        }

        // The object's checksum: COMPOSITE from the parts' checksums now, FULL_OBJECT over the
        // assembled body below.
        let composite = match upload_checksum {
            Some(c) if c.checksum_type == ChecksumType::Composite => {
                let values = parts
                    .iter()
                    .zip(&found)
                    .map(|(part, meta)| {
                        meta.checksums.get(c.algorithm).ok_or_else(|| {
                            corrupt(format!(
                                "part {} has no {} checksum",
                                part.part_number,
                                c.algorithm.as_str()
                            ))
                        })
                    })
                    .collect::<io::Result<Vec<&str>>>()?;
                let value = checksum::composite(c.algorithm, &values)
                    .ok_or_else(|| corrupt("a part's checksum is malformed".to_owned()))?;
                Some(value)
            }
            _ => None,
        };
        let full_object = upload_checksum
            .filter(|c| c.checksum_type == ChecksumType::FullObject)
            .map(|c| c.algorithm);
        let placeholder_sums = match upload_checksum {
            Some(c) => {
                let mut v = "0".repeat(checksum::base64_len(c.algorithm));
                if c.checksum_type == ChecksumType::Composite {
                    v.push_str(&format!("-{}", parts.len()));
                }
                Checksums::only(c.algorithm, v)
            }
            None => Checksums::default(),
        };
        let etag_placeholder = format!("\"{}-{}\"", "0".repeat(32), parts.len());
        let layout: Vec<u64> = found.iter().map(|m| m.size).collect();
        let placeholder = StoredHeader {
            parts: layout.clone(),
            ..placeholder_header(key, &upload.headers, &placeholder_sums, &etag_placeholder)
        };
        let mut writer = self.new_writer(&placeholder, false, full_object).await?;
        let mut md5s = Md5::new();
        for (part, checked) in parts.iter().zip(&found) {
            let path = dir.join(part_file_name(part.part_number));
            let opened = blocking(move || open_stored(&path, None)).await?;
            // Re-read: a part replaced since the check above must not slip in.
            let Some((file, header, _)) = opened else {
                return Err(invalid_part(part.part_number));
            };
            let meta = header.meta;
            if meta.etag != checked.etag || meta.size != checked.size || meta.checksums != checked.checksums {
                return Err(invalid_part(part.part_number));
            }
            let digest = hex::decode(meta.etag.trim_matches('"'))
                .map_err(|_| corrupt(format!("part {} has a malformed ETag", part.part_number)))?;
            md5s.update(&digest);
            let before = writer.size;
            let reader = tokio::fs::File::from_std(file).take(meta.size);
            writer
                .write_stream(ReaderStream::with_capacity(reader, STREAM_CHUNK))
                .await?;
            if writer.size - before != meta.size {
                return Err(corrupt(format!("part {} is shorter than its header says", part.part_number)).into());
            }
        }
        let etag = format!("\"{}-{}\"", hex::encode(md5s.finalize()), parts.len());
        let checksums = match (upload_checksum, composite, writer.checksum()) {
            (Some(c), Some(value), _) | (Some(c), None, Some(value)) => Checksums::only(c.algorithm, value),
            _ => Checksums::default(),
        };
        // Not what the request announced: nothing is written (the writer's temp file goes with
        // it), and the upload stays.
        expected.check(&checksums, writer.size)?;
        let meta = ObjectMeta {
            size: writer.size,
            etag: etag.clone(),
            last_modified: now_secs(),
            headers: upload.headers,
            checksums,
        };
        let temp = writer
            .finish(&StoredHeader {
                key: key.to_owned(),
                meta: meta.clone(),
                parts: layout,
            })
            .await?;
        {
            let _w = b.write.lock().await;
            b.check_alive()?;
            // A concurrent completion or abort may have won.
            if tokio::fs::metadata(dir.join(UPLOAD_META)).await.is_err() {
                return Err(OriginError::NoSuchUpload);
            }
            self.commit(&b, key, temp, &meta).await?;
        }
        Ok(PutOutput {
            etag,
            checksums: meta.checksums,
        })
    }

    pub(super) async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<()> {
        self.bucket(bucket)?;
        let (dir, _) = self.load_upload(bucket, key, upload_id).await?;
        match self.discard_upload_dir(upload_id, dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(OriginError::NoSuchUpload),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes an upload's directory out of `.uploads/` in one rename, then removes it. Removed
    /// where it was, a part renamed into it meanwhile (an UploadPart racing an abort or an
    /// expiry) failed the removal and left the directory without its description: parts no
    /// listing, expiry or abort would ever see again. Moved first, such a part finds no directory
    /// (NoSuchUpload), or lands before the move and goes with it. What a crash leaves in `.tmp/`
    /// goes at the next open.
    pub(super) async fn discard_upload_dir(&self, upload_id: &str, dir: PathBuf) -> io::Result<()> {
        let trash = self.tmp.join(format!("upload-gone-{upload_id}-{}", new_id()));
        let moved = trash.clone();
        blocking(move || std::fs::rename(&dir, &moved)).await?;
        if let Err(e) = tokio::fs::remove_dir_all(&trash).await {
            tracing::warn!(path = %trash.display(), error = %e, "could not remove an upload's parts");
        }
        Ok(())
    }

    /// The checksum an upload's object will keep, as CreateMultipartUpload asked for it.
    pub(crate) async fn upload_checksum(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> OriginResult<Option<MultipartChecksum>> {
        self.bucket(bucket)?;
        Ok(self.load_upload(bucket, key, upload_id).await?.1.checksum)
    }

    pub(super) async fn upload_parts(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<Vec<PartInfo>> {
        self.bucket(bucket)?;
        let (dir, _) = self.load_upload(bucket, key, upload_id).await?;
        let parts = blocking(move || {
            let mut parts = Vec::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let Some(number) = name.to_str().and_then(parse_part_file_name) else {
                    continue;
                };
                if let Some((_, header, _)) = open_stored(&entry.path(), None)? {
                    let meta = header.meta;
                    parts.push(PartInfo {
                        part_number: number,
                        etag: meta.etag,
                        size: meta.size,
                        last_modified: meta.last_modified,
                        checksums: meta.checksums,
                    });
                }
            }
            Ok(Some(parts))
        })
        .await?;
        let mut parts = parts.ok_or(OriginError::NoSuchUpload)?;
        parts.sort_by_key(|p| p.part_number);
        Ok(parts)
    }

    pub(super) async fn uploads_under(&self, bucket: &str, prefix: &str) -> OriginResult<Vec<UploadInfo>> {
        self.bucket(bucket)?;
        let mut uploads: Vec<UploadInfo> = self
            .scan_uploads()
            .await?
            .into_iter()
            .filter(|(_, m)| m.bucket == bucket && m.key.starts_with(prefix))
            .map(|(id, m)| UploadInfo {
                key: m.key,
                upload_id: id,
                initiated: m.initiated,
                checksum: m.checksum,
            })
            .collect();
        uploads.sort_by(|a, b| {
            (a.key.as_str(), a.initiated, a.upload_id.as_str()).cmp(&(
                b.key.as_str(),
                b.initiated,
                b.upload_id.as_str(),
            ))
        });
        Ok(uploads)
    }
}

pub(super) fn part_file_name(part_number: i32) -> String {
    format!("{PART_PREFIX}{part_number:05}")
}

pub(super) fn parse_part_file_name(name: &str) -> Option<i32> {
    let digits = name.strip_prefix(PART_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn read_upload_meta(path: &Path) -> io::Result<Option<UploadMeta>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| corrupt(format!("{}: bad upload description: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
