"""Finds faces in each frame of a video with one of OpenCV's Haar cascades and prints one line per
face: `FRAME X Y W H` (frames numbered from the first argument's offset, boxes in pixels of the
full frame). Each frame is searched at half size, one thread, so a chunk's detections are the
ones the same frames get in a whole-video run.

usage: detect.py VIDEO CASCADE FIRST_FRAME"""
import sys

import cv2

video, cascade, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
cv2.setNumThreads(1)
detector = cv2.CascadeClassifier(cascade)
if detector.empty():
    sys.exit(f"{cascade}: not a cascade OpenCV can read")
capture = cv2.VideoCapture(video)
if not capture.isOpened():
    sys.exit(f"{video}: OpenCV cannot read it")
frame = first
while True:
    ok, image = capture.read()
    if not ok:
        break
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2), interpolation=cv2.INTER_AREA)
    faces = detector.detectMultiScale(small, scaleFactor=1.2, minNeighbors=5, minSize=(24, 24))
    for x, y, w, h in sorted(tuple(int(v) for v in face) for face in faces):
        print(frame, 2 * x, 2 * y, 2 * w, 2 * h)
    frame += 1
